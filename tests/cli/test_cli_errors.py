"""Broken and hostile inputs through the command line: every one exits with status 2 and prints
exactly one line `error: ...` on stderr naming the problem, never a traceback. Most cases call
`main()` in-process; a few run `python -m omnivision` to show nothing else reaches the terminal and
that hostile files are refused quickly."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from omnivision.cli.main import main
from omnivision.processing.byte_tokenizer import byte_level_tokenizer

from tests.conftest import REPO

IMAGE = REPO / "assets" / "shapes.png"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A valid tiny model (native and GGUF) and broken files derived from it."""
    root = tmp_path_factory.mktemp("cli-errors")
    tok = root / "byte-tokenizer.json"
    byte_level_tokenizer().backend.save(str(tok))
    native = root / "native"
    assert main(["init", "--preset", "tiny", "--random-weights", str(native), "--tokenizer", str(tok)]) == 0
    assert main(["convert", str(native), str(root / "gguf"), "--to", "gguf", "--dtype", "F32"]) == 0
    llm = next((root / "gguf").glob("*-llm-*.gguf"))
    good = llm.read_bytes()
    assert good[:4] == b"GGUF"
    f = {"root": root, "native": native, "llm": llm}

    def write(name: str, data: bytes) -> Path:
        p = root / name
        p.write_bytes(data)
        f[name] = p
        return p

    write("bad-magic.gguf", b"GGML" + good[4:])
    write("truncated-data.gguf", good[:len(good) // 2])  # tensor table intact, data cut
    write("truncated-header.gguf", good[:200])  # cut inside the metadata
    write("truncated-tiny.gguf", good[:10])  # not even a whole header
    # tensor count (bytes 8..16) set to 2**60: must be refused before anything is allocated
    write("huge-count.gguf", good[:8] + struct.pack("<Q", 2**60) + good[16:])
    weights = (native / "model.safetensors").read_bytes()
    write("long-header.safetensors", struct.pack("<Q", len(weights) * 4) + weights[8:])
    # a native checkpoint whose model.safetensors has that header
    broken_native = root / "broken-native"
    shutil.copytree(native, broken_native)
    (broken_native / "model.safetensors").write_bytes(f["long-header.safetensors"].read_bytes())
    f["broken-native"] = broken_native
    # a GGUF directory holding only a damaged file
    (root / "gguf-dir-bad").mkdir()
    shutil.copy(f["huge-count.gguf"], root / "gguf-dir-bad" / "model.gguf")
    f["gguf-dir-bad"] = root / "gguf-dir-bad"
    # images
    write("random.png", os.urandom(512))
    png = IMAGE.read_bytes()
    write("truncated.png", png[:len(png) // 3])
    gif = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 128, 255)).save(gif, format="GIF")
    write("image.gif", gif.getvalue())
    (root / "neither").mkdir()
    (root / "neither" / "notes.txt").write_text("no model here")
    f["neither"] = root / "neither"
    return f


def error_line(capsys, rc: int, stdout_empty: bool = True) -> str:
    """Check the one-line error contract and return the line."""
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    if stdout_empty:
        assert out == ""  # nothing half-done on stdout
    return lines[0]


# --- model files, for `info` and `run --model` ------------------------------------------------

BROKEN_GGUF = [
    ("bad-magic.gguf", "not a GGUF file"),
    ("truncated-data.gguf", "runs past the end of the file"),
    ("truncated-header.gguf", "cannot fit in a file of 200 bytes"),
    ("truncated-tiny.gguf", "file is truncated"),
    ("huge-count.gguf", f"tensor count {2**60} cannot fit"),
]


@pytest.mark.parametrize("name,problem", BROKEN_GGUF)
@pytest.mark.parametrize("command", ["info", "run"])
def test_broken_gguf(files, capsys, command, name, problem):
    argv = ["info", str(files[name])] if command == "info" else ["run", "--model", str(files[name]), "hi"]
    line = error_line(capsys, main(argv))
    assert name in line and problem in line


def test_broken_gguf_inside_a_gguf_directory(files, capsys):
    for argv in (["info", str(files["gguf-dir-bad"])], ["run", "--model", str(files["gguf-dir-bad"]), "hi"]):
        line = error_line(capsys, main(argv))
        assert "model.gguf" in line and "tensor count" in line


def test_safetensors_header_longer_than_the_file(files, capsys):
    size = files["long-header.safetensors"].stat().st_size
    line = error_line(capsys, main(["info", str(files["long-header.safetensors"])]))
    assert "long-header.safetensors" in line
    assert f"runs past the end of the file ({size} bytes)" in line
    # the same file as the weights of a native checkpoint, for both commands
    for argv in (["info", str(files["broken-native"])],
                 ["run", "--model", str(files["broken-native"]), "hi"]):
        # `info` has printed the (valid) config before it reaches the weights
        line = error_line(capsys, main(argv), stdout_empty=argv[0] == "run")
        assert "model.safetensors" in line and "runs past the end of the file" in line


def test_safetensors_file_is_not_a_model_for_run(files, capsys):
    line = error_line(capsys, main(["run", "--model", str(files["long-header.safetensors"]), "hi"]))
    assert "long-header.safetensors" in line and "not a model" in line


@pytest.mark.parametrize("command", ["info", "run"])
def test_missing_path(files, capsys, command):
    missing = files["root"] / "no-such-model"
    argv = ["info", str(missing)] if command == "info" else ["run", "--model", str(missing), "hi"]
    line = error_line(capsys, main(argv))
    assert str(missing) in line and "no such file or directory" in line


def test_directory_that_is_neither(files, capsys):
    line = error_line(capsys, main(["info", str(files["neither"])]))
    assert "no native checkpoint and no .gguf files" in line
    line = error_line(capsys, main(["run", "--model", str(files["neither"]), "hi"]))
    assert "neither a native checkpoint" in line and "nor GGUF files" in line


# --- images and settings ----------------------------------------------------------------------

@pytest.mark.parametrize("name,problem", [
    ("random.png", "not a PNG, JPEG or WEBP file"),
    ("truncated.png", "could not decode image"),
    ("image.gif", "unsupported image format GIF"),
    ("missing.png", "could not read file"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_broken_image(files, capsys, name, problem, stream):
    argv = ["run", "--model", str(files["native"]), "--dtype", "float32",
            "--image", str(files["root"] / name), "What is it?"]
    line = error_line(capsys, main(argv + ["--stream"] * stream))
    assert name in line and problem in line


def test_broken_first_image_for_chat(files, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("never answered\n"))
    line = error_line(capsys, main(["chat", "--model", str(files["native"]),
                                    "--image", str(files["image.gif"])]))
    assert "unsupported image format GIF" in line


@pytest.mark.parametrize("option,problem", [
    (["--temperature", "-1"], "temperature must be >= 0, got -1.0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-k", "-2"], "top_k must be >= 0"),
    (["--repetition-penalty", "0"], "repetition_penalty must be > 0"),
    (["--max-new-tokens", "-1"], "max_new_tokens must be >= 0"),
    (["--max-new-tokens", "100000"], "exceeds the context of 2048"),
])
def test_bad_generation_settings(files, capsys, option, problem):
    argv = ["run", "--model", str(files["native"]), "--image", str(IMAGE), *option, "hi"]
    line = error_line(capsys, main(argv))
    assert problem in line


def test_bad_settings_fail_before_the_image_is_read(files, capsys):
    # the settings are checked first, so this names the temperature, not the image
    argv = ["run", "--model", str(files["native"]), "--temperature", "-1",
            "--image", str(files["image.gif"]), "hi"]
    assert "temperature" in error_line(capsys, main(argv))


def test_invalid_dtype_is_an_argparse_error(files, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--model", str(files["native"]), "--dtype", "float64", "hi"])
    assert e.value.code == 2
    _, err = capsys.readouterr()
    assert "invalid choice: 'float64'" in err and "Traceback" not in err


def test_bad_convert_dtype(files, capsys):
    line = error_line(capsys, main(["convert", str(files["native"]), str(files["root"] / "out"),
                                    "--to", "gguf", "--dtype", "Q4_K"]))
    assert "--dtype for gguf must be one of" in line
    assert not (files["root"] / "out").exists()


# --- hub repo ids, offline --------------------------------------------------------------------

@pytest.mark.parametrize("second", ["offline", "network"])
def test_hub_repo_id_offline_names_the_files_and_where_to_put_them(capsys, monkeypatch, second):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("local_files_only", False)))
        if kwargs.get("local_files_only") or second == "offline":
            raise LocalEntryNotFoundError("not in the cache")
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    line = error_line(capsys, main(["run", "--model", "NexaAIDev/OmniVLM-968M", "hi"]))
    assert calls == [("NexaAIDev/OmniVLM-968M", True), ("NexaAIDev/OmniVLM-968M", False)]
    assert line.startswith("error: NexaAIDev/OmniVLM-968M: cannot download from the hub")
    assert ("ConnectionError" if second == "network" else "LocalEntryNotFoundError") in line
    assert "mmproj" in line and "language-model GGUF" in line
    assert "https://huggingface.co/NexaAIDev/OmniVLM-968M" in line
    assert "into one folder and pass that folder as the model" in line


# --- real processes ---------------------------------------------------------------------------

@pytest.mark.long
def test_real_processes_print_one_error_line_quickly(files):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    cases = [
        (["info", str(files["huge-count.gguf"])], "tensor count"),
        (["run", "--model", str(files["truncated-data.gguf"]), "hi"], "runs past the end of the file"),
        (["run", "--model", str(files["native"]), "--image", str(files["image.gif"]), "hi"],
         "unsupported image format GIF"),
    ]
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "omnivision", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True)
             for argv, _ in cases]
    finished: dict[int, float] = {}
    try:
        while len(finished) < len(procs) and time.monotonic() - start < 60:
            for i, p in enumerate(procs):
                if i not in finished and p.poll() is not None:
                    finished[i] = time.monotonic() - start
            time.sleep(0.02)
        results = [p.communicate(timeout=5) for p in procs]  # the little they print fits a pipe
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    # each process, interpreter start included, is done in seconds (three run side by side)
    assert len(finished) == len(procs) and max(finished.values()) < 10, finished
    for p, (out, err), (argv, problem) in zip(procs, results, cases):
        assert p.returncode == 2, (argv, err)
        assert out == ""
        assert "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], err

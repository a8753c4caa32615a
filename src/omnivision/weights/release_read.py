"""Reading the official GGUF pair: a `qwen2` language-model GGUF and a `siglip` mmproj GGUF.

Finds the pair in a directory (told apart by `general.architecture`, never by file name), picks one
language-model file when several precisions are present, derives the whole config from metadata and
tensor shapes (the projector width and the number of image tokens come from `mm.0.weight`), and
loads the tensors through the validating reader. Keys and names: docs/official-release.md 2.1 and 2.2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omnivision.config import (OmniVisionConfig, ProcessingConfig, ProjectorConfig, TextConfig,
                               VisionConfig)
from omnivision.model import OmniVisionModel
from omnivision.model.qwen2 import LanguageOnly, Qwen2ForCausalLM
from omnivision.processing.tokenizer import Tokenizer
from omnivision.weights.convert import llm_to_native, mmproj_to_native
from omnivision.weights.errors import CheckpointError
from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.native import load_state

# higher precision first: the default pick when a directory holds several language-model files
PRECISION_ORDER = ("F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1",
                   "Q4_0", "Q3_K", "Q2_K")

DEFAULT_TEMPLATE = "omnivision"


@dataclass
class ReleaseFiles:
    llm: GGUFFile
    mmproj: GGUFFile
    note: str
    """Which language-model file was chosen and why (reported to the user)."""


def weight_type(f: GGUFFile) -> str:
    """The type of the bulk of a language model's weights (that of its first attention matrix)."""
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight", "token_embd.weight"):
        if name in f.tensors:
            return f.tensors[name].ggml_type.name
    return "?"


def _rank(type_name: str) -> int:
    return PRECISION_ORDER.index(type_name) if type_name in PRECISION_ORDER else len(PRECISION_ORDER)


def find_release(directory: str | os.PathLike, gguf_type: str | None = None) -> ReleaseFiles:
    """Open every `.gguf` in `directory` and pick the mmproj and one language-model file."""
    directory = Path(directory)
    files = [GGUFFile.open(p) for p in sorted(directory.glob("*.gguf"))]
    mmprojs = [f for f in files if f.metadata.get("general.architecture") == "siglip"]
    llms = [f for f in files if f.metadata.get("general.architecture") == "qwen2"]
    if len(mmprojs) != 1:
        raise CheckpointError(directory, f"expected one GGUF with general.architecture 'siglip' "
                                         f"(the mmproj), found {len(mmprojs)}")
    if not llms:
        raise CheckpointError(directory, "no GGUF with general.architecture 'qwen2' (the language model)")
    by_type: dict[str, GGUFFile] = {}
    for f in llms:
        kind = weight_type(f)
        if kind in by_type:
            raise CheckpointError(directory, f"two {kind} language-model GGUFs ({by_type[kind].path.name}, "
                                             f"{f.path.name}): keep one, or give the file as --model")
        by_type[kind] = f
    if gguf_type is not None:
        wanted = gguf_type.upper()
        if wanted not in by_type:
            raise CheckpointError(directory, f"no language-model GGUF of type {gguf_type}; "
                                             f"present: {', '.join(sorted(by_type))}")
        chosen, why = wanted, "as asked"
    else:
        chosen = min(by_type, key=_rank)
        why = "the highest precision present" if len(by_type) > 1 else "the only one present"
    llm = by_type[chosen]
    note = f"language model: {llm.path.name} ({chosen}, {why})"
    return ReleaseFiles(llm=llm, mmproj=mmprojs[0], note=note)


def _meta(f: GGUFFile, key: str, kind: type | tuple[type, ...], default=None):
    value = f.metadata.get(key, default)
    if value is None:
        raise CheckpointError(f.path, f"missing metadata key {key!r}")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in kinds:  # bool is an int
        raise CheckpointError(f.path, f"metadata key {key!r} has the wrong type ({type(value).__name__})")
    return value


def _f32(value: int | float) -> float:
    """A number read from a GGUF float32 field as the shortest decimal with that float32 value:
    1e-06, not 9.999999974752427e-07 (values that are not exact float32 numbers are left alone)."""
    value = float(value)
    single = np.float32(value)
    return float(str(single)) if float(single) == value else value


def _shape(f: GGUFFile, name: str) -> tuple[int, ...]:
    if name not in f.tensors:
        raise CheckpointError(f.path, f"missing tensor {name!r}")
    return f.tensors[name].shape


def text_config(llm: GGUFFile) -> TextConfig:
    """The language model's config from a `qwen2` GGUF's metadata and tensor shapes."""
    t = "qwen2."
    try:
        return TextConfig(
            vocab_size=_shape(llm, "token_embd.weight")[0], hidden_size=_meta(llm, t + "embedding_length", int),
            intermediate_size=_meta(llm, t + "feed_forward_length", int),
            num_layers=_meta(llm, t + "block_count", int), num_heads=_meta(llm, t + "attention.head_count", int),
            num_kv_heads=_meta(llm, t + "attention.head_count_kv", int),
            rope_theta=_f32(_meta(llm, t + "rope.freq_base", (int, float), 1_000_000.0)),
            rms_norm_eps=_f32(_meta(llm, t + "attention.layer_norm_rms_epsilon", (int, float), 1e-6)),
            max_position_embeddings=_meta(llm, t + "context_length", int),
            tie_word_embeddings="output.weight" not in llm.tensors)
    except ValueError as e:
        raise CheckpointError(llm.path, f"inconsistent model description: {e}") from None


def load_language_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32
                        ) -> tuple[Qwen2ForCausalLM, Tokenizer]:
    """A `qwen2` language-model GGUF alone (no mmproj): the decoder and its tokenizer."""
    llm = GGUFFile.open(path)
    if llm.metadata.get("general.architecture") != "qwen2":
        raise CheckpointError(llm.path, f"general.architecture is {llm.metadata.get('general.architecture')!r}, "
                                        f"expected 'qwen2'")
    try:
        tokenizer = Tokenizer.from_gguf_metadata(llm.metadata)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(llm.path, f"cannot build the tokenizer from its metadata: {e}") from None
    with torch.device("meta"):
        holder = LanguageOnly(Qwen2ForCausalLM(text_config(llm)))
    try:
        state = llm_to_native(_tensors(llm, dtype))
    except KeyError as e:
        raise CheckpointError(llm.path, f"unexpected tensor name: {e.args[0]}") from None
    load_state(holder, state, llm.path, dtype)
    return holder.language.eval(), tokenizer


def release_config(llm: GGUFFile, mmproj: GGUFFile, tokenizer: Tokenizer) -> OmniVisionConfig:
    """The model config implied by the pair's metadata and tensor shapes."""
    v = "siglip.vision."
    hidden_v = _meta(mmproj, v + "embedding_length", int)
    vision = VisionConfig(
        image_size=_meta(mmproj, v + "image_size", int), patch_size=_meta(mmproj, v + "patch_size", int),
        hidden_size=hidden_v, intermediate_size=_meta(mmproj, v + "feed_forward_length", int),
        num_layers=_meta(mmproj, v + "block_count", int), num_heads=_meta(mmproj, v + "attention.head_count", int),
        layer_norm_eps=_f32(_meta(mmproj, v + "attention.layer_norm_epsilon", (int, float), 1e-6)),
        has_head="v.head.probe" in mmproj.tensors)
    mm0 = _shape(mmproj, "mm.0.weight")  # [hidden, in]
    compression = mmproj.metadata.get("omnivision.projector.compression")
    if compression is None:
        # the release does not store it: 9x the vision width means the flat 9-token concat
        compression = {9 * hidden_v: "concat9", hidden_v: "none"}.get(mm0[1])
        if compression is None:
            raise CheckpointError(mmproj.path, f"mm.0.weight takes {mm0[1]} inputs, neither the vision "
                                               f"width {hidden_v} nor 9x it")
    text = text_config(llm)
    processing = ProcessingConfig(
        template=mmproj.metadata.get("omnivision.template", DEFAULT_TEMPLATE),
        image_mean=tuple(_f32(x) for x in _meta(mmproj, v + "image_mean", list)),
        image_std=tuple(_f32(x) for x in _meta(mmproj, v + "image_std", list)),
        **({"system_prompt": mmproj.metadata["omnivision.system_prompt"]}
           if "omnivision.system_prompt" in mmproj.metadata else {}))
    stops = [tokenizer.im_end_id, tokenizer.endoftext_id]
    eos = llm.metadata.get("tokenizer.ggml.eos_token_id")
    if isinstance(eos, int) and eos not in stops:
        stops.append(eos)
    try:
        return OmniVisionConfig(vision=vision, projector=ProjectorConfig(compression=compression,
                                                                         hidden_size=mm0[0]),
                                text=text, processing=processing, image_token_id=tokenizer.image_pad_id,
                                stop_token_ids=tuple(stops), name=str(llm.metadata.get("general.name", "omnivision")))
    except ValueError as e:
        raise CheckpointError(mmproj.path, f"inconsistent model description: {e}") from None


def _tensors(f: GGUFFile, dtype: torch.dtype, data: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor of `f` in `dtype`; without `data`, as `meta` tensors of the same shapes."""
    if not data:
        return {name: torch.empty(info.shape, dtype=dtype, device="meta") for name, info in f.tensors.items()}
    return {name: f.tensor(name, dtype) for name in f.tensors}


def _quantized_llm_state(model: OmniVisionModel, llm: GGUFFile, dtype: torch.dtype) -> tuple[dict, str]:
    """The language model's state with its Linear weights kept in the file's Q8_0 / Q4_0 codes."""
    from omnivision.quantize.apply import quantize_model
    from omnivision.weights.gguf_quantized import SCHEME_FOR_TYPE, layer_buffers, scheme_for_type

    kind = weight_type(llm)
    if kind not in SCHEME_FOR_TYPE:
        raise CheckpointError(llm.path, f"keeping weights quantized needs a Q8_0 or Q4_0 language model, "
                                        f"this one is {kind}")
    scheme = scheme_for_type(kind)
    # the output head (or the tied embedding) stays quantized when the file stores it in the same type
    head_name = "output.weight" if "output.weight" in llm.tensors else "token_embd.weight"
    head = llm.tensors[head_name].ggml_type.name == kind
    with torch.device("meta"):  # only the layer structure; the buffers come from the file below
        quantize_model(model, scheme, ("language",), head=head)
    quantized = {n for n, m in model.named_modules() if hasattr(m, "qweight")}
    state, exact, layers = {}, 0, 0
    for native, gguf_name in llm_to_native({n: n for n in llm.tensors}).items():
        layer = native.removesuffix(".weight")
        if layer + ".table" in quantized:  # a tied embedding kept quantized (quantize.embedding)
            layer += ".table"
        if layer in quantized and native.endswith(".weight"):
            buffers, is_exact = layer_buffers(llm, gguf_name, scheme)
            state.update({f"{layer}.{k}": v for k, v in buffers.items()})
            exact, layers = exact + is_exact, layers + 1
        else:
            state[native] = llm.tensor(gguf_name, dtype)
    return state, f"{kind} kept as {scheme} ({exact} of {layers} layers exact copies)"


def load_release(files: ReleaseFiles, dtype: torch.dtype = torch.float32, keep_quantized: bool = False,
                 *, tensor_data: bool = True) -> tuple[OmniVisionModel, Tokenizer]:
    """Build the model from the pair; quantized tensors are dequantized to `dtype`, or, with
    `keep_quantized`, a Q8_0 / Q4_0 language model's matrices load into int8 / int4 layers
    (`weights.gguf_quantized`) and `files.note` says how.

    `tensor_data=False` runs every check of loading (the tokenizer from the metadata, the config
    the metadata and shapes imply, every tensor name and shape against it) without reading tensor
    data; the model's tensors are then on the `meta` device (what `omnivision info` does).
    `keep_quantized` needs the data and is ignored then."""
    try:
        tokenizer = Tokenizer.from_gguf_metadata(files.llm.metadata)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(files.llm.path, f"cannot build the tokenizer from its metadata: {e}") from None
    config = release_config(files.llm, files.mmproj, tokenizer)
    with torch.device("meta"):
        model = OmniVisionModel(config)
    try:
        state = mmproj_to_native(_tensors(files.mmproj, dtype, tensor_data))
        if keep_quantized and tensor_data:
            llm_state, how = _quantized_llm_state(model, files.llm, dtype)
            files.note += f"; {how}"
        else:
            llm_state = llm_to_native(_tensors(files.llm, dtype, tensor_data))
        state.update(llm_state)
    except KeyError as e:
        raise CheckpointError(files.mmproj.path, f"unexpected tensor name: {e.args[0]}") from None
    if "vision.head.probe" in state:
        state["vision.head.probe"] = state["vision.head.probe"].reshape(1, 1, -1)  # stored squeezed
    load_state(model, state, files.mmproj.path.parent, dtype)
    return model.eval(), tokenizer

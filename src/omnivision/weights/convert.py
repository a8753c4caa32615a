"""Tensor-name conversion between the native layout and the other layouts, as pure dict -> dict maps.

Native names are Hugging Face's, under one prefix per part: `vision.*` (SiglipVisionModel without its
`vision_model.` prefix), `projector.{0,2}.*`, `language.*` (Qwen2ForCausalLM). Other layouts:

- Hugging Face components: `vision_model.*` (SigLIP) and `model.*` / `lm_head.*` (Qwen2).
- The official HF checkpoint: `vision_tower.vision_model.*`, `multi_modal_projector.*`, `language_model.*`.
- The official GGUF pair: the mmproj's `v.*` / `mm.*` names (docs/official-release.md 2.1; note `ffn_down` is
  SigLIP's fc1 and `ffn_up` its fc2) and llama.cpp's `qwen2` names (2.2).

The functions take and return `{name: tensor}`; none of them touch a model or a file. A name that no
rule maps is an error, so nothing is silently dropped.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")

# native suffix (after "vision.") <-> mmproj GGUF name; "{}" is a layer index
_MMPROJ_TABLE = {
    "embeddings.patch_embedding.weight": "v.patch_embd.weight",
    "embeddings.patch_embedding.bias": "v.patch_embd.bias",
    "embeddings.position_embedding.weight": "v.position_embd.weight",
    "encoder.layers.{}.self_attn.q_proj.{}": "v.blk.{}.attn_q.{}",
    "encoder.layers.{}.self_attn.k_proj.{}": "v.blk.{}.attn_k.{}",
    "encoder.layers.{}.self_attn.v_proj.{}": "v.blk.{}.attn_v.{}",
    "encoder.layers.{}.self_attn.out_proj.{}": "v.blk.{}.attn_out.{}",
    "encoder.layers.{}.layer_norm1.{}": "v.blk.{}.ln1.{}",
    "encoder.layers.{}.layer_norm2.{}": "v.blk.{}.ln2.{}",
    "encoder.layers.{}.mlp.fc1.{}": "v.blk.{}.ffn_down.{}",
    "encoder.layers.{}.mlp.fc2.{}": "v.blk.{}.ffn_up.{}",
    "post_layernorm.{}": "v.post_ln.{}",
    "head.probe": "v.head.probe",
    "head.attention.in_proj_weight": "v.head.attention.in_weight",
    "head.attention.in_proj_bias": "v.head.attention.in_bias",
    "head.attention.out_proj.{}": "v.head.attention.out.{}",
    "head.layernorm.{}": "v.head.ln.{}",
    "head.mlp.fc1.{}": "v.head.ffn_down.{}",
    "head.mlp.fc2.{}": "v.head.ffn_up.{}",
}
_MMPROJ = {"vision." + k: v for k, v in _MMPROJ_TABLE.items()}
_MMPROJ.update({"projector.{}.{}": "mm.{}.{}"})

# native suffix (after "language.") <-> llama.cpp qwen2 name
_LLM_TABLE = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.layers.{}.input_layernorm.weight": "blk.{}.attn_norm.weight",
    "model.layers.{}.self_attn.q_proj.{}": "blk.{}.attn_q.{}",
    "model.layers.{}.self_attn.k_proj.{}": "blk.{}.attn_k.{}",
    "model.layers.{}.self_attn.v_proj.{}": "blk.{}.attn_v.{}",
    "model.layers.{}.self_attn.o_proj.weight": "blk.{}.attn_output.weight",
    "model.layers.{}.post_attention_layernorm.weight": "blk.{}.ffn_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "blk.{}.ffn_gate.weight",
    "model.layers.{}.mlp.up_proj.weight": "blk.{}.ffn_up.weight",
    "model.layers.{}.mlp.down_proj.weight": "blk.{}.ffn_down.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LLM = {"language." + k: v for k, v in _LLM_TABLE.items()}


def _compile(table: Mapping[str, str]) -> list[tuple[re.Pattern, str]]:
    rules = []
    for src, dst in table.items():
        pattern = re.escape(src).replace(r"\{\}", r"([A-Za-z0-9_]+)")
        rules.append((re.compile(f"^{pattern}$"), dst))
    return rules


def _renamer(table: Mapping[str, str], what: str) -> Callable[[str], str]:
    rules = _compile(table)

    def rename(name: str) -> str:
        for pattern, dst in rules:
            m = pattern.match(name)
            if m:
                return dst.format(*m.groups())
        raise KeyError(f"no {what} name for tensor {name!r}")

    return rename


_to_mmproj = _renamer(_MMPROJ, "mmproj GGUF")
_from_mmproj = _renamer({v: k for k, v in _MMPROJ.items()}, "native")
_to_llm = _renamer(_LLM, "qwen2 GGUF")
_from_llm = _renamer({v: k for k, v in _LLM.items()}, "native")


def _map(sd: Mapping[str, T], rename: Callable[[str], str]) -> dict[str, T]:
    out: dict[str, T] = {}
    for name, value in sd.items():
        new = rename(name)
        if new in out:
            raise KeyError(f"two tensors map to {new!r}")
        out[new] = value
    return out


def split_native(sd: Mapping[str, T]) -> tuple[dict[str, T], dict[str, T]]:
    """Native state dict -> (vision + projector part, language part)."""
    mm = {k: v for k, v in sd.items() if k.startswith(("vision.", "projector."))}
    llm = {k: v for k, v in sd.items() if k.startswith("language.")}
    other = set(sd) - set(mm) - set(llm)
    if other:
        raise KeyError(f"tensors outside vision/projector/language: {sorted(other)[:5]}")
    return mm, llm


def native_to_mmproj(sd: Mapping[str, T]) -> dict[str, T]:
    return _map(sd, _to_mmproj)


def mmproj_to_native(sd: Mapping[str, T]) -> dict[str, T]:
    return _map(sd, _from_mmproj)


def native_to_llm(sd: Mapping[str, T]) -> dict[str, T]:
    return _map(sd, _to_llm)


def llm_to_native(sd: Mapping[str, T]) -> dict[str, T]:
    return _map(sd, _from_llm)


def _prefixed(sd: Mapping[str, T], old: str, new: str) -> dict[str, T]:
    out = {}
    for name, value in sd.items():
        if not name.startswith(old):
            raise KeyError(f"tensor {name!r} does not start with {old!r}")
        out[new + name[len(old):]] = value
    return out


_SIGLIP_TOP = ("embeddings.", "encoder.", "post_layernorm.", "head.")
_SIGLIP_TEXT_SIDE = ("text_model.", "logit_scale", "logit_bias")


def siglip_from_hf(sd: Mapping[str, T]) -> dict[str, T]:
    """A SigLIP checkpoint -> native `vision.*`.

    Accepts a full `SiglipModel` (`vision_model.*`; its text side is dropped) and a
    `SiglipVisionModel` as transformers 5 saves it (no prefix).
    """
    out = {}
    for name, value in sd.items():
        if name.startswith(_SIGLIP_TEXT_SIDE):
            continue
        rest = name[len("vision_model."):] if name.startswith("vision_model.") else name
        if not rest.startswith(_SIGLIP_TOP):
            raise KeyError(f"unexpected tensor {name!r} in a SigLIP checkpoint")
        out["vision." + rest] = value
    return out


def siglip_to_hf(sd: Mapping[str, T]) -> dict[str, T]:
    return _prefixed(sd, "vision.", "vision_model.")


def qwen2_from_hf(sd: Mapping[str, T], tied: bool) -> dict[str, T]:
    """`Qwen2ForCausalLM` state dict -> native `language.*`; a tied `lm_head` is dropped."""
    return {"language." + k: v for k, v in sd.items() if not (tied and k == "lm_head.weight")}


def qwen2_to_hf(sd: Mapping[str, T]) -> dict[str, T]:
    return _prefixed(sd, "language.", "")


def release_hf_to_native(sd: Mapping[str, T], tied: bool = True) -> dict[str, T]:
    """The official Llava-style HF checkpoint (docs/official-release.md 1.4) -> native names."""
    out: dict[str, T] = {}
    for name, value in sd.items():
        if name.startswith("vision_tower.vision_model."):
            out["vision." + name[len("vision_tower.vision_model."):]] = value
        elif name.startswith("multi_modal_projector."):
            out["projector." + name[len("multi_modal_projector."):]] = value
        elif name.startswith("language_model."):
            rest = name[len("language_model."):]
            if not (tied and rest == "lm_head.weight"):
                out["language." + rest] = value
        else:
            raise KeyError(f"unexpected tensor {name!r} in the release checkpoint")
    return out

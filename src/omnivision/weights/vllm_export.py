"""The vLLM folder: a checkpoint laid out the way vLLM reads a model, for `omnivision.vllm_plugin`.

vLLM reads `config.json` through transformers' `AutoConfig` (it needs `model_type` and
`architectures`), the tokenizer through `AutoTokenizer` (`tokenizer_config.json`, whose chat template
builds the prompt of a chat request) and default stop ids from `generation_config.json`. The native
`config.json` has none of those, so `omnivision convert SRC OUT --to vllm` writes a folder of its own:

- `config.json`: `model_type` "omnivision" (the plugin registers its config class with `AutoConfig`),
  a Qwen2 `text_config` and a SigLIP `vision_config` in transformers' field names for vLLM's own
  layers, and the whole native config under `omnivision` (the projector, the image preprocessing, the
  prompt template), so nothing is described twice by hand;
- `model.safetensors`: the native weights under their native names (the plugin maps them);
- `tokenizer.json`, `tokenizer_config.json` with a chat template that renders exactly what
  `processing.prompt.render` renders, and `generation_config.json` with the stop ids.

Chat template. The official templates end the prompt at the user's `<|im_end|>`; the model itself
writes `\\n<|im_start|>assistant\\n` before its answer (train/encode.py labels it). vLLM adds a
generation prompt by default, so here that header is the generation prompt: a trained model writes
it anyway, and an OpenAI client then gets the answer without it. As in `omnivision serve`, system
messages replace the default system prompt, the text parts of a message are joined by a line break,
and the image block sits where the template puts it, wherever the image part was.

No vLLM and no transformers are needed to write the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from omnivision.config import OmniVisionConfig
from omnivision.model import OmniVisionModel
from omnivision.processing.prompt import ASSISTANT_HEADER, VISION_BLOCK
from omnivision.processing.tokenizer import Tokenizer
from omnivision.weights.native import write_directory, write_weights_and_tokenizer

MODEL_TYPE = "omnivision"
ARCHITECTURE = "OmniVisionForConditionalGeneration"
DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def text_config(config: OmniVisionConfig) -> dict:
    """The decoder as transformers' `Qwen2Config` fields."""
    t = config.text
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads, "head_dim": t.head_dim, "hidden_act": "silu",
            "rope_theta": t.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
            "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": t.tie_word_embeddings, "use_sliding_window": False,
            "sliding_window": None, "attention_dropout": 0.0,
            "eos_token_id": list(config.stop_token_ids)}


def vision_config(config: OmniVisionConfig) -> dict:
    """The tower as transformers' `SiglipVisionConfig` fields (its pooling head is not used)."""
    v = config.vision
    return {"model_type": "siglip_vision_model", "image_size": v.image_size, "patch_size": v.patch_size,
            "num_channels": v.num_channels, "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads, "layer_norm_eps": v.layer_norm_eps,
            "hidden_act": "gelu_pytorch_tanh", "attention_dropout": 0.0, "vision_use_head": False}


def _user_turn_with_image(template: str) -> str:
    """The Jinja of a user turn with an image (`text` holds its text), as processing.prompt has it."""
    if template == "omnivision-v1":
        return "{{ '<|im_start|>user\\n' + text + '\\n" + VISION_BLOCK + "<|im_end|>' }}"
    if template == "omnivision-ocr":
        return "{{ '<|im_start|>user\\n " + VISION_BLOCK + "<|im_end|>' }}"
    return "{{ '<|im_start|>user\\n\\n" + VISION_BLOCK + "' + text + '<|im_end|>' }}"


def chat_template(config: OmniVisionConfig) -> str:
    """A Jinja chat template rendering what `processing.prompt.render` renders for `config`, plus
    the assistant header as the generation prompt (see the module docstring).

    It walks each message's content parts (the OpenAI form), which is how vLLM knows to pass images
    as parts rather than as placeholder text."""
    system = json.dumps(config.processing.system_prompt)
    parts = [
        "{%- set ns = namespace(system=" + system + ", started=false) -%}",
        "{%- for message in messages -%}",
        "{%- if message['role'] in ['system', 'developer'] -%}",
        "{%- set texts = namespace(items=[]) -%}",
        "{%- if message['content'] is string -%}{%- set texts.items = [message['content']] -%}",
        "{%- else -%}{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}",
        "{%- set texts.items = texts.items + [part['text']] -%}{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{%- if ns.started -%}{%- set ns.system = ns.system + '\\n' + texts.items | join('\\n') -%}",
        "{%- else -%}{%- set ns.system = texts.items | join('\\n') -%}{%- set ns.started = true -%}{%- endif -%}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{{ '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' }}",
        "{%- set turns = messages | rejectattr('role', 'in', ['system', 'developer']) | list -%}",
        "{%- for message in turns -%}",
        "{%- set c = namespace(texts=[], image=false) -%}",
        "{%- if message['content'] is string -%}{%- set c.texts = [message['content']] -%}",
        "{%- else -%}{%- for part in message['content'] -%}",
        "{%- if part['type'] == 'text' -%}{%- set c.texts = c.texts + [part['text']] -%}",
        "{%- elif part['type'] in ['image', 'image_url', 'image_pil', 'image_embeds'] -%}{%- set c.image = true -%}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{%- set text = c.texts | join('\\n') -%}",
        "{%- if message['role'] == 'user' -%}",
        "{%- if c.image -%}" + _user_turn_with_image(config.processing.template),
        "{%- else -%}{{ '<|im_start|>user\\n' + text + '<|im_end|>' }}{%- endif -%}",
        "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}",
        "{%- else -%}{{ '<|im_start|>assistant\\n' + text + '<|im_end|>\\n' }}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{ '\\n" + ASSISTANT_HEADER + "\\n' }}{%- endif -%}",
    ]
    return "".join(parts)


def hf_config(config: OmniVisionConfig, dtype: torch.dtype) -> dict:
    """`config.json` of the vLLM folder."""
    return {"model_type": MODEL_TYPE, "architectures": [ARCHITECTURE], "dtype": DTYPES[dtype],
            "text_config": text_config(config), "vision_config": vision_config(config),
            "image_token_id": config.image_token_id, "num_image_tokens": config.num_image_tokens,
            "tie_word_embeddings": config.text.tie_word_embeddings,
            "eos_token_id": list(config.stop_token_ids), "omnivision": config.to_dict()}


def tokenizer_config(config: OmniVisionConfig, tokenizer: Tokenizer) -> dict:
    """`tokenizer_config.json`: the generic fast tokenizer over `tokenizer.json`, with the template."""
    eos = tokenizer.id_to_token(config.stop_token_ids[0])
    return {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": chat_template(config),
            "eos_token": eos, "pad_token": "<|endoftext|>", "bos_token": None, "add_bos_token": False,
            "model_max_length": config.text.max_position_embeddings, "clean_up_tokenization_spaces": False}


def save_vllm(model: OmniVisionModel, tokenizer: Tokenizer, out: str | os.PathLike) -> Path:
    """Write the vLLM folder `out` (replacing an existing one only once complete)."""
    if getattr(model, "quantization", None) is not None:
        raise ValueError("the model is quantized; the vLLM folder takes float weights (vLLM quantizes "
                         "with its own schemes); convert from the unquantized checkpoint")
    dtype = model.dtype
    if dtype not in DTYPES:
        raise ValueError(f"the model's dtype {dtype} has no vLLM name")
    config = model.config

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config(config, tokenizer), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"eos_token_id": list(config.stop_token_ids), "pad_token_id": tokenizer.endoftext_id}, indent=2) + "\n")
        write_weights_and_tokenizer(tmp, model.state_dict(), tokenizer)

    return write_directory(out, write)

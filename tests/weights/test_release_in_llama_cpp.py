"""A GGUF pair written by this project runs in llama.cpp: its language model, fed the same input
embeddings (text and image), gives the same greedy tokens as this project's decoder.

Slow and optional: runs when llama-cpp-python is installed (`pip install llama-cpp-python` builds
llama.cpp from source, about 6 minutes here). Select with `pytest -m slow`. Both tokenizers a file
of this project can carry: the real Qwen one, and the byte-level fallback written when none is at
hand (llama.cpp needs its merges key, `processing/tokenizer.py`).
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from omnivision.generation.generate import GenerationConfig, generate
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.prompt import Message, build_inputs
from omnivision.processing.tokenizer import find_local_qwen_tokenizer, qwen25_from_qwen3_tokenizer_json
from omnivision.weights.random_init import random_model
from omnivision.weights.release_write import write_release

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


def _llama_greedy(path, embeds: torch.Tensor, n_new: int, stops) -> list[int]:
    """Feed embeds [T, D] as one embedding batch, then decode tokens greedily."""
    lib = llama_cpp
    model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
    assert model, "llama.cpp could not load the language-model GGUF"
    params = lib.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 512
    ctx = lib.llama_init_from_model(model, params)
    vocab = lib.llama_model_get_vocab(model)
    n_vocab = lib.llama_vocab_n_tokens(vocab)
    t, d = embeds.shape
    try:
        batch = lib.llama_batch_init(t, d, 1)
        batch.n_tokens = t
        flat = embeds.float().contiguous().view(-1).tolist()
        ctypes.memmove(batch.embd, (ctypes.c_float * len(flat))(*flat), 4 * len(flat))
        for i in range(t):
            batch.pos[i], batch.n_seq_id[i], batch.logits[i] = i, 1, i == t - 1
            batch.seq_id[i][0] = 0
        assert lib.llama_decode(ctx, batch) == 0
        lib.llama_batch_free(batch)
        out, pos = [], t
        for _ in range(n_new):
            logits = lib.llama_get_logits_ith(ctx, -1)
            row = torch.tensor([logits[j] for j in range(n_vocab)])
            token = int(row.argmax())
            if token in stops:
                break
            out.append(token)
            step = lib.llama_batch_init(1, 0, 1)
            step.n_tokens = 1
            step.token[0], step.pos[0], step.n_seq_id[0], step.logits[0] = token, pos, 1, True
            step.seq_id[0][0] = 0
            assert lib.llama_decode(ctx, step) == 0
            lib.llama_batch_free(step)
            pos += 1
        return out
    finally:
        lib.llama_free(ctx)
        lib.llama_model_free(model)


def _tokenizer(kind: str):
    if kind == "byte-level":  # what a fresh machine without the Qwen tokenizer writes (the bench)
        return byte_level_tokenizer()
    found = find_local_qwen_tokenizer()
    if found is None:
        pytest.skip("needs the Qwen tokenizer (bash scripts/setup.sh test)")
    return qwen25_from_qwen3_tokenizer_json(found)


@pytest.mark.parametrize("kind", ["qwen", "byte-level"])
def test_written_language_model_gives_the_same_greedy_tokens_in_llama_cpp(tmp_path, kind):
    tokenizer = _tokenizer(kind)
    model = random_model("tiny", tokenizer, seed=3)
    llm_path, _ = write_release(model, tokenizer, tmp_path, "F32")

    ids = build_inputs(tokenizer, [Message("user", "What shapes are in the image?", has_image=True)],
                       num_image_tokens=model.config.num_image_tokens)
    with torch.no_grad():
        image = model.encode_images(torch.randn(1, 3, 84, 84))
        embeds = model.embed(torch.tensor([ids]), image)[0]  # [T, D]
    n_new = 12
    ours = list(generate(model, ids, image, GenerationConfig(max_new_tokens=n_new,
                                                             stop_token_ids=model.config.stop_token_ids)))
    theirs = _llama_greedy(llm_path, embeds, n_new, set(model.config.stop_token_ids))
    assert len(ours) >= 4
    assert theirs == ours

"""One stage-2 (SFT) training step at the full 968M size on a GPU, against transformers' classes.

    python scripts/gpu_sft_step.py [--batch 16] [--seq 512] [--answer 382] [--steps 10]

Random weights in bf16, vision tower frozen, projector and language model trained with AdamW. Each
sample is 512 tokens: 81 image embeddings inside a chat prompt, then an answer of `--answer` tokens
that carries the loss. Prints tokens/s and peak memory for:

- `transformers`: SiglipVisionModel + nn.Sequential projector + Qwen2ForCausalLM (sdpa), loss by
  passing `labels` (full-vocabulary logits for every position, as a transformers recipe computes it);
- `omnivision eager`: this project's model, logits only at labelled positions;
- `omnivision compiled`: the same with the vision tower and decoder layers under `torch.compile`.

Never run by CI (no GPU there).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from omnivision.config import preset
from omnivision.model import OmniVisionModel, init_weights
from omnivision.train.losses import next_token_targets, token_loss

IMAGE_TOKEN = 151655


def make_batch(batch: int, seq: int, answer: int, n_image: int, vocab: int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151643, (batch, seq), generator=g)
    ids[:, 20:20 + n_image] = IMAGE_TOKEN
    labels = torch.full_like(ids, -100)
    labels[:, seq - answer:] = ids[:, seq - answer:]
    pixels = torch.randn(batch, 3, 384, 384, generator=g)
    return ids.to(device), labels.to(device), pixels.to(device, torch.bfloat16)


def omnivision_step_fn(model: OmniVisionModel):
    def step(ids, labels, pixels):
        with torch.no_grad():
            features = model.vision(pixels)  # frozen tower: [B, 729, 1152]
        at, targets = next_token_targets(labels)  # logits only where a next token is labelled
        return token_loss(model(ids, vision_features=features, logits_at=at), targets)  # [M, V] -> []
    return step


def build_omnivision(device, compiled: bool):
    cfg = preset("omnivision-968m")
    with torch.device("meta"):
        model = OmniVisionModel(cfg)
    model = model.to_empty(device=device)
    init_weights(model)
    model = model.to(torch.bfloat16).train()
    model.vision.requires_grad_(False)
    if compiled:
        model.vision = torch.compile(model.vision)
        for i, layer in enumerate(model.language.model.layers):
            model.language.model.layers[i] = torch.compile(layer)
    params = [p for p in model.parameters() if p.requires_grad]
    return omnivision_step_fn(model), params


def build_transformers(device):
    import transformers

    vcfg = transformers.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                           num_attention_heads=16, image_size=384, patch_size=14,
                                           attn_implementation="sdpa")
    tcfg = transformers.Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                    num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                    rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                    attn_implementation="sdpa")
    vision = transformers.SiglipVisionModel(vcfg).to(device, torch.bfloat16).eval().requires_grad_(False)
    llm = transformers.Qwen2ForCausalLM(tcfg).to(device, torch.bfloat16).train()
    projector = nn.Sequential(nn.Linear(10368, 4096), nn.GELU(approximate="tanh"),
                              nn.Linear(4096, 896)).to(device, torch.bfloat16)

    def step(ids, labels, pixels):
        with torch.no_grad():
            features = vision(pixel_values=pixels).last_hidden_state
        image = projector(features.reshape(features.shape[0], 81, -1))
        embeds = llm.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter((ids == IMAGE_TOKEN)[..., None], image.to(embeds.dtype))
        return llm(inputs_embeds=embeds, labels=labels).loss

    return step, [*projector.parameters(), *llm.parameters()]


def measure(name, build, args, device) -> dict:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step, params = build()
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    batch = make_batch(args.batch, args.seq, args.answer, 81, 151936, device)

    def one():
        loss = step(*batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(args.warmup):
        one()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = one()
    sync()
    elapsed = (time.perf_counter() - start) / args.steps
    result = {"name": name, "step_s": round(elapsed, 4),
              "tokens_per_s": round(args.batch * args.seq / elapsed),
              "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
              "loss": round(float(loss), 3)}
    print(json.dumps(result), flush=True)
    del step, params, opt
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--answer", type=int, default=382)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="transformers,eager,compiled")
    ap.add_argument("--device", default="cuda", help="cpu only to check the script itself")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    runs = {"transformers": lambda: build_transformers(device),
            "eager": lambda: build_omnivision(device, compiled=False),
            "compiled": lambda: build_omnivision(device, compiled=True)}
    results = []
    for name in args.only.split(","):
        try:
            results.append(measure(name, runs[name], args, device))
        except Exception as e:  # report and go on: one failing variant must not cost the others
            print(json.dumps({"name": name, "error": f"{type(e).__name__}: {e}"[:500]}), flush=True)
    base = next((r for r in results if r["name"] == "transformers"), None)
    print(f"{'variant':<14}{'step s':>9}{'tokens/s':>11}{'peak GiB':>10}{'vs transformers':>17}")
    for r in results:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(f"{r['name']:<14}{r['step_s']:>9}{r['tokens_per_s']:>11}{str(r['peak_gib']):>10}{ratio:>17}")


if __name__ == "__main__":
    main()

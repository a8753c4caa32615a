"""Answering on a CUDA GPU: this project's generation against transformers' `generate`, same card.

    python scripts/bench_cuda.py [--new-tokens 256] [--runs 3] [--batch 16] [--out bench-cuda.json]

The 968M shapes with random bf16 weights (the timing does not depend on the values), one 384x384
image, a prompt of the 81 image tokens and 24 text tokens, greedy decoding of `--new-tokens` tokens
with every token handed back as it comes (streaming). Rows, each the median of `--runs` runs:

- ours: `generate_steps` with eager decode steps, with CUDA-graph steps of the eager step
  (`OMNIVISION_COMPILE=off`), and by default: the fixed-shape step compiled, then captured
  (`generation/static_decode.py`; the row's `first_use_s` includes the compilation);
- transformers: `generate` with its default dynamic cache, and with `cache_implementation="static"`
  (which transformers compiles on CUDA);

at batch 1 (decode tok/s, time to first token for one image from PIL image to first token) and at
`--batch` rows (all rows' tokens per second). It also checks that the graph steps give the eager
steps' tokens (fp32: all of them; bf16: the share that agree). Never run by CI (no GPU there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from omnivision.bench.transformers_peer import _TokenTimes, build  # noqa: E402
from omnivision.bench.workload import bench_image  # noqa: E402
from omnivision.config import preset  # noqa: E402
from omnivision.generation import static_decode  # noqa: E402
from omnivision.generation.generate import GenerationConfig, generate_steps  # noqa: E402
from omnivision.model import OmniVisionModel, init_weights  # noqa: E402
from omnivision.processing.image import ImageProcessor  # noqa: E402

TEXT_TOKENS = 24
DEVICE = "cuda"


def prompt(config, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(100, min(150000, config.text.vocab_size - 10), (TEXT_TOKENS,), generator=g).tolist()
    return text[:4] + [config.image_token_id] * config.num_image_tokens + text[4:]


def ours_tokens(model, ids, embeds, n: int) -> tuple[list[list[int]], list[float]]:
    """Greedy tokens per row and the time each step's tokens were in hand."""
    out: list[list[int]] = [[] for _ in ids]
    times = []
    for step in generate_steps(model, ids, embeds, GenerationConfig(max_new_tokens=n)):
        times.append(time.perf_counter())
        for row, token in step.items():
            out[row].append(token)
    return out, times


def decode_rate(times: list[float], rows: int) -> float:
    return rows * (len(times) - 1) / (times[-1] - times[0])


@torch.inference_mode()
def measure_ours(model, config, image, args, label: str, results: dict) -> None:
    processor = ImageProcessor(config.vision.image_size, config.processing)
    ids = prompt(config)
    embeds = model.encode_images(processor([image]).to(DEVICE))
    for _ in range(2):  # warm-up (and, for the graph rows, capture)
        ours_tokens(model, [ids], embeds, 16)
        ours_tokens(model, [ids] * args.batch, embeds.expand(args.batch, -1, -1), 16)
    rates = [decode_rate(ours_tokens(model, [ids], embeds, args.new_tokens)[1], 1) for _ in range(args.runs)]
    batch_rates = [decode_rate(ours_tokens(model, [ids] * args.batch, embeds.expand(args.batch, -1, -1),
                                           args.new_tokens)[1], args.batch) for _ in range(args.runs)]

    def first_token() -> float:
        start = time.perf_counter()
        image_embeds = model.encode_images(processor([image]).to(DEVICE))
        next(iter(generate_steps(model, [ids], image_embeds, GenerationConfig(max_new_tokens=1))))
        return time.perf_counter() - start

    first_token()
    ttft = statistics.median(first_token() for _ in range(args.runs))
    results[label] = {"decode_tok_s": round(statistics.median(rates), 1),
                      f"batch{args.batch}_tok_s": round(statistics.median(batch_rates), 1),
                      "ttft_ms": round(ttft * 1000, 2)}
    print(label, results[label], flush=True)


@torch.inference_mode()
def measure_transformers(config, image, args, results: dict) -> None:
    processor, vision, projector, language = build(config, torch.bfloat16)
    vision, projector, language = vision.to(DEVICE), projector.to(DEVICE), language.to(DEVICE)
    ids = torch.tensor([prompt(config)], device=DEVICE)
    slots = ids == config.image_token_id

    def embeds(rows: int = 1):
        pixels = processor(images=image, return_tensors="pt")["pixel_values"].to(DEVICE, torch.bfloat16)
        features = vision(pixel_values=pixels).last_hidden_state
        out = language.get_input_embeddings()(ids).masked_scatter(slots[..., None], projector(features))
        return out.expand(rows, -1, -1)

    def run(cache: str | None, rows: int, n: int) -> _TokenTimes:
        times = _TokenTimes()
        e = embeds(rows)
        language.generate(inputs_embeds=e, attention_mask=torch.ones(e.shape[:2], dtype=torch.long, device=DEVICE),
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=0, streamer=times, cache_implementation=cache)
        assert len(times.times) == n, (len(times.times), n)
        return times

    for cache in (None, "static"):
        label = f"transformers {cache or 'dynamic'} cache"
        try:
            for rows in (1, args.batch):  # warm-up; the static cache compiles here
                for _ in range(3):
                    run(cache, rows, 16)
                run(cache, rows, args.new_tokens)
            rates = [decode_rate(run(cache, 1, args.new_tokens).times, 1) for _ in range(args.runs)]
            batch_rates = [decode_rate(run(cache, args.batch, args.new_tokens).times, args.batch)
                           for _ in range(args.runs)]
            ttfts = []
            for _ in range(args.runs):
                t = run(cache, 1, 1)
                ttfts.append(t.times[0] - t.start)
            results[label] = {"decode_tok_s": round(statistics.median(rates), 1),
                              f"batch{args.batch}_tok_s": round(statistics.median(batch_rates), 1),
                              "ttft_ms": round(statistics.median(ttfts) * 1000, 2)}
        except Exception as err:  # report and go on: the other rows still count
            traceback.print_exc()
            results[label] = {"error": f"{type(err).__name__}: {err}"[:300]}
        print(label, results[label], flush=True)


@torch.inference_mode()
def agreement(model, config, image, n: int) -> dict:
    """Greedy tokens of the graph steps against the eager steps: (agreeing, total)."""
    processor = ImageProcessor(config.vision.image_size, config.processing)
    ids = [prompt(config, seed) for seed in range(4)]
    embeds = model.encode_images(processor([image]).to(DEVICE)).expand(4, -1, -1)
    static_decode._idle.clear()
    graphed, _ = ours_tokens(model, ids, embeds, n)
    wanted = static_decode.wanted
    static_decode.wanted = lambda device: False
    try:
        eager, _ = ours_tokens(model, ids, embeds, n)
    finally:
        static_decode.wanted = wanted
    same = sum(a == b for g, e in zip(graphed, eager) for a, b in zip(g, e))
    first_diff = [next((i for i, (a, b) in enumerate(zip(g, e)) if a != b), None) for g, e in zip(graphed, eager)]
    return {"agree": same, "total": 4 * n, "first_difference_per_row": first_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default="bench-cuda.json")
    parser.add_argument("--quick", action="store_true", help="only the default row and its agreement")
    parser.add_argument("--preset", default="omnivision-968m")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    config = preset(args.preset)
    image = bench_image(config.vision.image_size)
    results: dict = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "torch": torch.__version__,
                     "new_tokens": args.new_tokens, "runs": args.runs}
    try:
        import transformers
        results["transformers"] = transformers.__version__
    except ImportError:
        pass

    def save() -> None:
        Path(args.out).write_text(json.dumps(results, indent=1))

    torch.manual_seed(0)
    model = OmniVisionModel(config)
    init_weights(model)
    model = model.to(DEVICE, torch.bfloat16).eval()
    if not args.quick:
        wanted = static_decode.wanted
        static_decode.wanted = lambda device: False
        measure_ours(model, config, image, args, "ours eager", results)
        static_decode.wanted = wanted
        os.environ[static_decode.COMPILE_ENV] = "off"
        measure_ours(model, config, image, args, "ours CUDA graph (OMNIVISION_COMPILE=off)", results)
        results["agreement bf16 graph vs eager"] = agreement(model, config, image, 64)
        fp32 = model.float()
        results["agreement fp32 graph vs eager"] = agreement(fp32, config, image, 64)
        model = fp32.to(torch.bfloat16)
        save()
        measure_transformers(config, image, args, results)
        save()
        del os.environ[static_decode.COMPILE_ENV]
    static_decode._idle.clear()
    started = time.perf_counter()
    measure_ours(model, config, image, args, "ours default (compiled + CUDA graph)", results)
    results["ours default (compiled + CUDA graph)"]["first_use_s"] = round(time.perf_counter() - started, 1)
    results["agreement bf16 default vs eager"] = agreement(model, config, image, 64)
    save()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""How close an int8 vision tower stays to the bf16 one, with weights only and with int8 activations.

    python scripts/int8_vision_quality.py [--model SRC] [--scenes 64]

The model (default: the bundled nano model) in bf16 is the reference. Its vision tower is quantized
to int8 (`quantize_model(..., parts=("vision",))`) and run twice: weight-only (the weight
dequantised for bf16 products) and with activations rounded per token to int8 for `torch._int_mm`
(`quantize/int8_linear.py`; forced here on every product, whatever the machine's choice or the row
count). Printed for each: the cosine between its image embeddings (projector output, per image
token) and the reference's on `--scenes` rendered scenes (mean and worst), the share of greedy
answers that are the same text, and `--check`'s top-1 agreement and KL on the answer tokens.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from omnivision.loader import BUNDLED, load
from omnivision.data.scenes import render_scene
from omnivision.data.shapes_dataset import sample_scenes
from omnivision.eval.quantization_quality import check_quantized, probe_items
from omnivision.quantize import int8_linear, quantize_model


@torch.inference_mode()
def embeddings(vlm, images) -> torch.Tensor:
    pixels = vlm.image_processor(images)
    return vlm.model.encode_images(pixels).float()  # [N, K, D]


def measure(reference, quantized, images, probes, label: str) -> dict:
    quantized.image_cache.clear()  # embeddings of the other variant must not be reused
    ref, got = embeddings(reference, images), embeddings(quantized, images)
    cos = F.cosine_similarity(ref, got, dim=-1)  # [N, K]
    same = sum(reference.answer(im, p, max_new_tokens=48).text == quantized.answer(im, p, max_new_tokens=48).text
               for im, p in probes)
    check = check_quantized(reference, quantized, label, probes)
    return {"cosine_mean": round(float(cos.mean()), 6), "cosine_worst": round(float(cos.min()), 6),
            "same_answers": f"{same}/{len(probes)}", "top1_agreement": round(check.top1_agreement, 4),
            "mean_kl": round(check.mean_kl, 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--scenes", type=int, default=64)
    args = parser.parse_args()
    source = args.model or str(BUNDLED)
    reference = load(source, dtype="bfloat16")
    size = reference.config.vision.image_size
    images = [render_scene(r.scene, size) for r in sample_scenes(args.scenes, seed=11)]
    probes = probe_items(size, scenes=12, seed=5)
    quantized = load(source, dtype="bfloat16")
    quantize_model(quantized.model, "int8", ("vision",))
    results = {}
    os.environ[int8_linear.ACTIVATIONS_ENV] = "off"
    results["int8 weights only"] = measure(reference, quantized, images, probes, "int8 vision, weights only")
    os.environ[int8_linear.ACTIVATIONS_ENV] = "on"
    int8_linear.ACTIVATION_MIN_ROWS = 1
    int8_linear.many_row_kernel = lambda n, k, dtype: int8_linear.INT8_ACTIVATIONS
    results["int8 weights and activations"] = measure(reference, quantized, images, probes,
                                                      "int8 vision, int8 activations")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

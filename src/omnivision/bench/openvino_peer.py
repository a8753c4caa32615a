"""The OpenVINO peer: the same SigLIP tower as `transformers_peer` (random weights, the model's
shapes), converted with `openvino.convert_model` and compiled for the CPU, as the anchor for the
vision tower.

`bf16` compiles with OpenVINO's bf16 inference-precision hint; `int8` first compresses the weights
to int8 per output channel with nncf (`compress_weights`, no calibration data), then compiles
likewise. OpenVINO decides what it actually computes in (without native bf16 it runs fp32), so the
row records the precision the compiled model reports. Only the tower is measured: OpenVINO's
language-model pipeline lives in another package (openvino-genai) and the decoder is compared with
transformers and llama.cpp already.
"""

from __future__ import annotations

import torch

from omnivision.bench.transformers_peer import image_processor, vision_config
from omnivision.bench.workload import Workload, bench_image, median_seconds, peak_rss_mb
from omnivision.config import OmniVisionConfig

PRECISIONS = ("bf16", "int8")


@torch.inference_mode()
def measure(config: OmniVisionConfig, precision: str, work: Workload) -> dict:
    import openvino
    import transformers

    if precision not in PRECISIONS:
        raise ValueError(f"OpenVINO precision must be one of {PRECISIONS}, got {precision!r}")
    tower = transformers.SiglipVisionModel(vision_config(config)).eval()  # fp32; OpenVINO lowers it
    pixels = image_processor(config)(images=bench_image(config.vision.image_size), return_tensors="pt")
    pixel_values = pixels["pixel_values"]  # [1, 3, S, S]
    model = openvino.convert_model(tower, example_input={"pixel_values": pixel_values})
    del tower
    if precision == "int8":
        import nncf

        model = nncf.compress_weights(model)  # int8 weights, one scale per output channel
    threads = work.threads or torch.get_num_threads()
    compiled = openvino.Core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    inputs = {0: pixel_values.numpy()}
    return {"vision_ms": round(median_seconds(lambda: request.infer(inputs), work.runs) * 1000, 2),
            "inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def _type_name(value) -> str:
    """'bf16' / 'f32' from OpenVINO's element type (a plain string in older releases)."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

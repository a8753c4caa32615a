"""One measurement in a process of its own: `python -m omnivision.bench.worker SPEC_JSON`.

The parent (`bench.run`) starts one worker per implementation and precision, so that each peak
resident memory figure covers exactly one model. The worker prints its result as one JSON line
prefixed with `RESULT ` (anything the libraries print is left around it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from omnivision.bench.workload import Workload

MARK = "RESULT "


def run(spec: dict) -> dict:
    work = Workload(**spec["work"])
    if work.threads:
        torch.set_num_threads(work.threads)
    impl, precision = spec["impl"], spec["precision"]
    if impl == "ours":
        from omnivision.bench import ours
        from omnivision.bench.prepare import COMPUTE_DTYPES
        from omnivision.loader import load

        return ours.measure(load(spec["path"], dtype=COMPUTE_DTYPES[precision]), work)
    if impl == "tune":
        return _tune(spec)
    if impl == "transformers":
        from omnivision.bench import transformers_peer
        from omnivision.bench.prepare import tokenizer_and_config

        _, config = tokenizer_and_config(spec["preset"])
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        return transformers_peer.measure(config, spec["prompt_ids"], dtype, work)
    if impl == "openvino":
        from omnivision.bench import openvino_peer
        from omnivision.bench.prepare import tokenizer_and_config

        _, config = tokenizer_and_config(spec["preset"])
        return openvino_peer.measure(config, precision, work)
    if impl == "llama.cpp":
        from omnivision.bench import llama_cpp_peer

        return llama_cpp_peer.measure(Path(spec["path"]), spec["prompt_ids"], work)
    raise ValueError(f"unknown implementation {impl!r}")


def _tune(spec: dict) -> dict:
    """Every kernel choice the measured checkpoints will meet: few-row bf16 products of the language
    model, then one image through each checkpoint's vision tower (attention precision; int8
    activations for an int8 tower), a prompt and one token through its decoder (many-row and one-row
    int8 products, per row or group-wise; int4 products)."""
    from omnivision.bench.prepare import COMPUTE_DTYPES
    from omnivision.generation.generate import prefill
    from omnivision.loader import load
    from omnivision.model import attention
    from omnivision.model.linear import CHOSEN_DTYPES, choose_kernels
    from omnivision.quantize import int4_few_rows, int8_group_linear, int8_linear, many_rows

    out, done = {}, set()
    for path, precision in zip(spec["paths"], spec["precisions"]):
        vlm = load(path, dtype=COMPUTE_DTYPES[precision])
        if vlm.dtype in CHOSEN_DTYPES and vlm.dtype not in done:  # every checkpoint has the same weight shapes
            chosen = choose_kernels(vlm.model.decode_weight_shapes(), vlm.dtype)
            prefix = "fp32 " if vlm.dtype == torch.float32 else ""
            out.update({f"{prefix}{n}x{k}/rows<={top}": kernel for (n, k, top), kernel in chosen.items()})
            done.add(vlm.dtype)
        size = vlm.config.vision.image_size
        with torch.inference_mode():
            vlm.model.encode_images(torch.zeros(1, 3, size, size))
            lm = vlm.model.language
            prompt = torch.zeros(1, many_rows.MANY_TIMED_ROWS, dtype=torch.long)
            prefill(lm, lm.embed(prompt), None, prompt.shape[1])  # many-row products
            prefill(lm, lm.embed(torch.zeros(1, 1, dtype=torch.long)), None, 1)  # one-row products
    out.update({f"vision attention h{h}/n{n}/d{d}": kernel for (h, n, d, _), kernel in attention._chosen.items()})
    out.update({f"int8 {kind} {n}x{k}": kernel for (kind, n, k, *_), kernel in int8_linear._chosen.items()})
    out.update({f"int8-g32 rows={rows} {n}x{k}": kernel
                for (n, k, rows, _), kernel in int8_group_linear._chosen.items()})
    out.update({f"int4 rows={rows} {n}x{k}/g{group}": kernel
                for (n, k, group, rows, _), kernel in int4_few_rows._chosen.items()})
    out.update({f"many-rows {op.removesuffix('-many-rows')} {shape}/rows={rows}": kernel
                for (op, shape, rows, _), kernel in many_rows._chosen.items()})
    return out


def main() -> int:
    result = run(json.loads(sys.argv[1]))
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

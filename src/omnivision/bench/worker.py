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
        from omnivision.loader import load
        from omnivision.model.linear import choose_kernels

        chosen = choose_kernels(load(spec["path"], dtype=torch.bfloat16).model.decode_weight_shapes())
        return {f"{n}x{k}/rows<={top}": kernel for (n, k, top), kernel in chosen.items()}
    if impl == "transformers":
        from omnivision.bench import transformers_peer
        from omnivision.bench.prepare import tokenizer_and_config

        _, config = tokenizer_and_config(spec["preset"])
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        return transformers_peer.measure(config, spec["prompt_ids"], dtype, work)
    if impl == "llama.cpp":
        from omnivision.bench import llama_cpp_peer

        return llama_cpp_peer.measure(Path(spec["path"]), spec["prompt_ids"], work)
    raise ValueError(f"unknown implementation {impl!r}")


def main() -> int:
    result = run(json.loads(sys.argv[1]))
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

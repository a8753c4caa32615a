"""The llama.cpp peer (llama-cpp-python): the language model's GGUF, quantized by llama.cpp itself.

llama.cpp has no SigLIP path in these packages, so it is measured on the language model alone: the
prefill of the same prompt ids (the image positions are fed as the image-pad token, so the same
number of positions is computed), and greedy decoding, the next token picked from its logits as this
project's loop does. `quantize` turns the F16 GGUF written by `weights.release_write` into Q8_0 /
Q4_0 with llama.cpp's own quantizer. Each result carries llama.cpp's `llama_print_system_info()`,
the instruction sets and backends its build uses, so that a weak build shows in the report.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from omnivision.bench.workload import Workload, median_seconds, peak_rss_mb

FTYPES = {"Q8_0": 7, "Q4_0": 2}  # llama_ftype values (llama.h)


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp's C code logs every tensor it quantizes to file descriptor 2: send it nowhere."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def llama_cpp_module(folder: Path | None = None):
    """The `llama_cpp` package, from `folder` (a build of its own, `--llama-cpp-dir`) when given."""
    if folder is not None and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import llama_cpp

    return llama_cpp


def quantize(f16_gguf: Path, out: Path, ftype: str, threads: int, folder: Path | None = None) -> None:
    llama_cpp = llama_cpp_module(folder)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = threads
    with _quiet_stderr():
        failed = llama_cpp.llama_model_quantize(str(f16_gguf).encode(), str(out).encode(), ctypes.byref(params))
    if failed:
        raise RuntimeError(f"llama.cpp could not quantize {f16_gguf} to {ftype}")


def measure(gguf: Path, prompt_ids: list[int], work: Workload) -> dict:
    import llama_cpp

    context = len(prompt_ids) + max(work.decode_tokens, work.answer_tokens) + 8
    # the same thread count as torch uses (llama-cpp-python's own default is half the logical CPUs)
    threads = work.threads or torch.get_num_threads()
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=context, n_batch=max(512, len(prompt_ids)),
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    def prefill() -> int:
        llm.reset()
        llm.eval(prompt_ids)
        return next_token()

    def run(new_tokens: int) -> tuple[float, float]:
        start = time.perf_counter()
        token = prefill()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = next_token()
        return first - start, time.perf_counter() - first

    result = {"prompt_tokens": len(prompt_ids), "prefill_ms": round(median_seconds(prefill, work.runs) * 1000, 2)}
    run(8)
    rests = [run(work.decode_tokens + 1)[1] for _ in range(work.runs)]
    result["decode_tok_s"] = round(statistics.median(work.decode_tokens / r for r in rests), 2)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return result

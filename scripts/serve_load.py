"""Load benchmark of `omnivision serve` (not a test): requests/s and time to first token under load.

    python scripts/serve_load.py                                  # the bundled nano model
    omnivision init --preset omnivision-968m --random-weights /tmp/omni968 --dtype bfloat16
    python scripts/serve_load.py --model /tmp/omni968 --max-batch 1,8 --threads 2
    python scripts/serve_load.py --model /tmp/omni968 --max-batch 8 --vllm "$(bash scripts/vllm_env.sh)"

For each `--max-batch` value, starts the server in this process on a free loopback port (uvicorn in
a thread, the same app as `omnivision serve`), then for each concurrency level keeps that many
streaming clients busy, closed loop (a client asks its next question when its last answer ends),
until `--requests-per-client` questions each have been answered. Every question carries a different
random 384x384 PNG, so the image-embedding cache never helps. Prints one Markdown row per setting
and level: requests/s, completion tokens/s (all completion tokens over the level's wall time), p50 /
p99 time to first token and p50 end-to-end latency, measured on the client side.

`--vllm PYTHON` adds the peer in the same run: the model is written as a vLLM folder
(`omnivision convert --to vllm`) and served by `vllm serve` from that Python's environment (made by
`scripts/vllm_env.sh`, where the plugin is installed), after our own settings have finished, so the
two never share the CPU; the same levels and images then go to it. Its context is `--context`
positions (the KV cache vLLM reserves for it is `VLLM_CPU_KVCACHE_SPACE` GiB, 4 unless set).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

from omnivision.kernels.machine import describe
from omnivision.loader import BUNDLED, load
from omnivision.serve.app import create_app
from omnivision.serve.settings import ServerSettings
from omnivision.weights.vllm_export import save_vllm


def _image_url(seed: int, size: int = 384) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def _ask(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, float, int]:
    body = {"model": "omnivision", "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "Describe this image."}]}]}
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return (first or end) - start, end - start, tokens


async def _level(base: str, concurrency: int, per_client: int, max_tokens: int, images: list[str]) -> dict:
    results: list[tuple[float, float, int]] = []

    async def worker(w: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            for i in range(per_client):
                results.append(await _ask(client, images[(w * per_client + i) % len(images)], max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - started
    ttft = sorted(r[0] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "req_s": len(results) / wall,
            "tok_s": sum(r[2] for r in results) / wall, "ttft_p50": statistics.median(ttft),
            "ttft_p99": ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))],
            "e2e_p50": statistics.median(r[1] for r in results)}


def _row(name: str, r: dict) -> str:
    return (f"| {name} | {r['concurrency']} | {r['requests']} | {r['req_s']:.2f} | {r['tok_s']:.1f} | "
            f"{r['ttft_p50']:.3f} | {r['ttft_p99']:.3f} | {r['e2e_p50']:.3f} |")


def _levels(name: str, base: str, levels: list[int], per_client: int, max_tokens: int, images: list[str]) -> None:
    asyncio.run(_level(base, 1, 1, 8, images[-1:]))  # warm-up
    first = 0
    for c in levels:  # each level its own images too
        level_images = images[first:first + c * per_client]
        first += len(level_images)
        print(_row(name, asyncio.run(_level(base, c, per_client, max_tokens, level_images))), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_server(python: str, folder: Path, dtype: str, context: int, threads: int) -> tuple[subprocess.Popen, str]:
    """`vllm serve folder` from the environment of `python`, once it answers /health."""
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    # `vllm serve`, started as a module: vllm-cpu 0.32.0's `vllm` command cannot find its own version
    proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--dtype", dtype, "--host", "127.0.0.1", "--port", str(port),
                             "--max-model-len", str(context), "--served-model-name", "omnivision",
                             "--limit-mm-per-prompt", '{"image": 1}'], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(2)
    proc.kill()
    raise SystemExit("vllm serve did not answer /health within 900 s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model source (default: the bundled nano model)")
    p.add_argument("--concurrency", default="1,4,8,16")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-batch", "--slots", dest="max_batch", default="1",
                   help="comma-separated server settings to measure, in one run (default 1)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--vllm", metavar="PYTHON", help="also measure `vllm serve` on the same model, from the "
                                                   "environment of this Python (scripts/vllm_env.sh)")
    p.add_argument("--context", type=int, default=4096, help="vLLM's --max-model-len (default 4096, our "
                                                            "server's default --batch-context)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vlm = load(args.model or BUNDLED)
    levels = [int(c) for c in args.concurrency.split(",")]
    per_setting = sum(levels) * args.requests_per_client + 1
    print(f"model: {args.model or 'bundled nano'} ({vlm.dtype}); {args.max_tokens} tokens per answer; {describe()}\n")
    print("| server | concurrency | requests | requests/s | completion tokens/s | TTFT p50 s | TTFT p99 s | e2e p50 s |")
    print("|---|---|---|---|---|---|---|---|")
    for n, max_batch in enumerate(int(b) for b in args.max_batch.split(",")):
        # every request its own image: the server's image cache must never help
        images = [_image_url(n * per_setting + i, vlm.config.vision.image_size) for i in range(per_setting)]
        server = uvicorn.Server(uvicorn.Config(create_app(vlm, ServerSettings(max_batch=max_batch, queue=256)),
                                               host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        _levels(f"ours, max batch {max_batch}", base, levels, args.requests_per_client, args.max_tokens, images)
        server.should_exit = True
        thread.join(timeout=60)
    if args.vllm:  # the first setting's images: a process of its own has none of them cached
        images = [_image_url(i, vlm.config.vision.image_size) for i in range(per_setting)]
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_vllm(vlm.model, vlm.tokenizer, Path(tmp) / "vllm")
            dtype = str(vlm.dtype).removeprefix("torch.")
            del vlm  # the peer gets the memory
            proc, base = _vllm_server(args.vllm, folder, dtype, args.context, args.threads)
            try:
                _levels("vLLM-CPU", base, levels, args.requests_per_client, args.max_tokens, images)
            finally:
                proc.terminate()
                proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak and long fuzz runs against `omnivision serve` (kept out of CI: minutes to hours).

    omnivision serve --slots 2 &                     # or any running server
    python scripts/serve_soak.py --url http://127.0.0.1:8080 --minutes 60 --clients 16
    python scripts/serve_soak.py --url http://127.0.0.1:8080 --fuzz 10000

The soak keeps `--clients` streaming and plain image questions in flight, a quarter of the streams
leaving after their first token, and reports per 10-minute window: requests, 5xx count, 503 count,
p50/p99 time to first token, and the server's resident memory (when it runs on this machine, read
from /proc by `--pid`). The fuzz run sends bodies drawn from the server's own OpenAPI schema and
mangled variants and counts 5xx answers. Exit status 1 when any 5xx was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

SCENE = Path(__file__).resolve().parents[1] / "assets" / "scene.png"


def _body(stream: bool, model: str) -> dict:
    url = "data:image/png;base64," + base64.b64encode(SCENE.read_bytes()).decode()
    return {"model": model, "max_tokens": 32, "stream": stream, "temperature": 0.7,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "Describe the scene."}]}]}


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def _client(client: httpx.AsyncClient, model: str, stop_at: float, stats: dict) -> None:
    while time.monotonic() < stop_at:
        stream, leave = random.random() < 0.7, random.random() < 0.25
        start = time.monotonic()
        try:
            if stream:
                async with client.stream("POST", "/v1/chat/completions", json=_body(True, model)) as r:
                    stats["status"].append(r.status_code)
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            stats["ttft"].append(time.monotonic() - start)
                            if leave:
                                break
            else:
                r = await client.post("/v1/chat/completions", json=_body(False, model))
                stats["status"].append(r.status_code)
        except httpx.HTTPError as e:
            stats["errors"].append(type(e).__name__)


async def soak(args) -> int:
    stop_at = time.monotonic() + args.minutes * 60
    bad = 0
    async with httpx.AsyncClient(base_url=args.url, timeout=300, headers=_auth(args)) as client:
        window = 0
        while time.monotonic() < stop_at:
            stats = {"status": [], "ttft": [], "errors": []}
            end = min(stop_at, time.monotonic() + args.window * 60)
            await asyncio.gather(*(_client(client, args.model, end, stats) for _ in range(args.clients)))
            ttft = sorted(stats["ttft"]) or [float("nan")]
            server_errors = sum(s >= 500 and s != 503 for s in stats["status"])
            bad += server_errors
            print(json.dumps({"window": window, "requests": len(stats["status"]), "5xx": server_errors,
                              "503": stats["status"].count(503), "client_errors": len(stats["errors"]),
                              "ttft_p50_s": round(statistics.median(ttft), 3),
                              "ttft_p99_s": round(ttft[int(0.99 * (len(ttft) - 1))], 3),
                              "server_rss_mb": _rss_mb(args.pid)}), flush=True)
            window += 1
    return 1 if bad else 0


def fuzz(args) -> int:
    from hypothesis import HealthCheck, given, settings, strategies as st
    from hypothesis_jsonschema import from_schema

    with httpx.Client(base_url=args.url, timeout=60, headers=_auth(args)) as client:
        spec = client.get("/openapi.json").json()
        schema = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        seen = {"5xx": 0, "sent": 0}

        @settings(max_examples=args.fuzz, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=from_schema(schema), junk=st.binary(max_size=256), mangle=st.booleans())
        def run(body, junk, mangle) -> None:
            payload = junk if mangle else json.dumps({**body, "max_tokens": 8}).encode()
            r = client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
            seen["sent"] += 1
            if r.status_code >= 500 and r.status_code != 503:
                seen["5xx"] += 1
                print(f"{r.status_code}: {payload[:200]!r} -> {r.text[:200]}", flush=True)

        run()
    print(json.dumps(seen))
    return 1 if seen["5xx"] else 0


def _auth(args) -> dict:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", default="omnivision")
    p.add_argument("--api-key")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--window", type=float, default=10.0, help="minutes per report line")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--pid", type=int, help="the server's process id, to report its resident memory")
    p.add_argument("--fuzz", type=int, default=0, help="run this many fuzz requests instead of the soak")
    args = p.parse_args()
    return fuzz(args) if args.fuzz else asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())

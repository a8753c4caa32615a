"""Load time and peak memory of a full-size model answering one question (README, "Full size").

    python scripts/measure_full_size.py CHECKPOINT [--dtype auto] [--max-new-tokens 16]

Prints one JSON line: load seconds, first-answer seconds, tokens generated, peak resident memory.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import omnivision

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()
    t0 = time.perf_counter()
    vlm = omnivision.load(args.checkpoint, dtype=args.dtype)
    t1 = time.perf_counter()
    answer = vlm.answer(REPO / "assets" / "shapes.png", "What shapes are in the image?",
                        max_new_tokens=args.max_new_tokens)
    t2 = time.perf_counter()
    params = sum(p.numel() for p in vlm.model.parameters())
    print(json.dumps({"parameters": params, "dtype": str(vlm.dtype), "load_s": round(t1 - t0, 2),
                      "answer_s": round(t2 - t1, 2), "new_tokens": len(answer.token_ids),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()

"""The benchmark's outputs: the phase table, the targets as ratios against the peers, JSON and a PNG.

Every ratio compares figures measured in the same run. Targets (issue 5): end to end faster than
transformers' pipeline and than the best mix of peers (transformers' vision tower and projector
feeding llama.cpp's language model: its prefill plus the remaining answer tokens at its decode
rate); time to first token at most 0.6x transformers'; vision at least 1.5x faster and no slower than
OpenVINO's; decode >= 1.5x transformers, int8 >= 1.0x llama.cpp Q8_0, int4 >= 1.0x Q4_0; no quantized
phase slower than unquantized; peak memory of a quantized model answering one image question at
most 988 MB. "Unquantized" is the machine's default precision (`machine.default_precision`: bf16
where the CPU computes it natively, else fp32, as `--dtype auto` picks), for ours and transformers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

MEMORY_BUDGET_MB = 988.0
"""The OmniVision release's stated FP16 memory figure."""

COLUMNS = (("preprocess_ms", "preproc ms"), ("vision_ms", "vision ms"), ("projector_ms", "proj ms"),
           ("prefill_ms", "prefill ms"), ("ttft_ms", "TTFT ms"), ("ttft_uncompressed_ms", "TTFT 729 ms"),
           ("ttft_repeat_ms", "TTFT again ms"),
           ("decode_tok_s", "decode tok/s"), ("e2e_ms", "e2e ms"),
           ("answer_peak_rss_mb", "answer peak MB"), ("peak_rss_mb", "bench peak MB"))


def _find(results: list[dict], impl: str, precision: str) -> dict | None:
    for row in results:
        if row["impl"] == impl and row["precision"] == precision and "error" not in row and "skipped" not in row:
            return row
    return None


def _target(name: str, value: float, goal: float, higher_is_better: bool, detail: str) -> dict:
    met = value >= goal if higher_is_better else value <= goal
    return {"target": name, "value": round(value, 3), "goal": ("≥ " if higher_is_better else "≤ ") + f"{goal:g}",
            "met": met, "detail": detail}


def mix_e2e_ms(hf: dict, llama: dict, answer_tokens: int) -> float:
    """transformers' preprocessing, vision and projector, then llama.cpp's prefill and decode."""
    return (hf["preprocess_ms"] + hf["vision_ms"] + hf["projector_ms"] + llama["prefill_ms"]
            + (answer_tokens - 1) / llama["decode_tok_s"] * 1000)


def targets(doc: dict) -> list[dict]:
    rows, answer_tokens = doc["results"], doc["workload"]["answer_tokens"]
    default = doc["machine"].get("default_precision", "bf16")
    ours = {p: _find(rows, "ours", p) for p in ("fp32", "bf16", "int8", "int4", "int4-lm")}
    hf = _find(rows, "transformers", default)
    llama = {t: _find(rows, "llama.cpp", t) for t in ("Q8_0", "Q4_0")}
    out = []
    measured = {p: r for p, r in ours.items() if r}
    if measured and hf:
        best = min(measured, key=lambda p: measured[p]["e2e_ms"])
        e2e = measured[best]["e2e_ms"]
        out.append(_target("end to end vs transformers (speed-up)", hf["e2e_ms"] / e2e, 1.0, True,
                           f"ours {best} {e2e:.0f} ms, transformers {default} {hf['e2e_ms']:.0f} ms"))
        mixes = {t: mix_e2e_ms(hf, r, answer_tokens) for t, r in llama.items() if r}
        if mixes:
            t = min(mixes, key=mixes.get)
            out.append(_target("end to end vs best peer mix (speed-up)", mixes[t] / e2e, 1.0, True,
                               f"ours {best} {e2e:.0f} ms, transformers vision + llama.cpp {t} "
                               f"{mixes[t]:.0f} ms"))
    d = default
    if ours[d] and hf:
        b = ours[d]
        out.append(_target(f"TTFT {d} / transformers {d}", b["ttft_ms"] / hf["ttft_ms"], 0.6, False,
                           f"{b['ttft_ms']:.0f} ms vs {hf['ttft_ms']:.0f} ms"))
        out.append(_target(f"vision {d} speed-up over transformers", hf["vision_ms"] / b["vision_ms"], 1.5, True,
                           f"{b['vision_ms']:.0f} ms vs {hf['vision_ms']:.0f} ms"))
        out.append(_target(f"decode {d} / transformers {d}", b["decode_tok_s"] / hf["decode_tok_s"], 1.5, True,
                           f"{b['decode_tok_s']:.1f} vs {hf['decode_tok_s']:.1f} tok/s"))
    openvino = _find(rows, "openvino", "bf16")
    if ours[d] and openvino:
        b = ours[d]
        out.append(_target(f"vision {d} speed-up over OpenVINO bf16", openvino["vision_ms"] / b["vision_ms"], 1.0,
                           True, f"{b['vision_ms']:.0f} ms vs {openvino['vision_ms']:.0f} ms"))
    for precision, ggml_type, goal in (("int8", "Q8_0", 1.0), ("int4", "Q4_0", 1.0)):
        if ours[precision] and llama[ggml_type]:
            a, b = ours[precision]["decode_tok_s"], llama[ggml_type]["decode_tok_s"]
            out.append(_target(f"decode {precision} / llama.cpp {ggml_type}", a / b, goal, True,
                               f"{a:.1f} vs {b:.1f} tok/s"))
    slowest = _slowest_quantized_phase(ours, d)
    if slowest:
        ratio, precision, phase = slowest
        out.append(_target(f"slowest quantized phase vs {d} (speed-up)", ratio, 1.0, True, f"{precision} {phase}"))
    quantized = {p: ours[p]["answer_peak_rss_mb"] for p in ("int8", "int4", "int4-lm") if ours[p]}
    if quantized:
        p = min(quantized, key=quantized.get)
        listed = ", ".join(f"{k} {r['answer_peak_rss_mb']:.0f}" for k, r in ours.items() if r)
        out.append(_target(f"peak memory answering once, {p} (MB)", quantized[p], MEMORY_BUDGET_MB, False,
                           f"all: {listed} MB"))
    return out


QUANTIZED_PHASES = (("vision_ms", False), ("prefill_ms", False), ("ttft_ms", False), ("decode_tok_s", True))


def _slowest_quantized_phase(ours: dict, default: str) -> tuple[float, str, str] | None:
    """(speed-up over `default`, precision, phase) of the quantized phase that gains least over it."""
    base = ours[default]
    if not base:
        return None
    ratios = [((q[phase] / base[phase]) if rate else (base[phase] / q[phase]), p, phase)
              for p in ("int8", "int4", "int4-lm") if (q := ours[p]) for phase, rate in QUANTIZED_PHASES]
    return min(ratios) if ratios else None


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table(doc: dict) -> str:
    """The phase table and the targets, as Markdown."""
    head = "| implementation | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in doc["results"]:
        name = f"{row['impl']} {row['precision']}"
        if "error" in row or "skipped" in row:
            lines.append(f"| {name} | " + ("failed: " + row["error"] if "error" in row else
                                           "skipped: " + row["skipped"]) + " |" + " |" * (len(COLUMNS) - 1))
            continue
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    found = targets(doc)
    if found:
        lines += ["", "| target | measured | goal | met | detail |", "|---|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'no'} | "
                  f"{t['detail']} |" for t in found]
    m = doc["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {doc['workload']['threads'] or m['torch_threads']} "
                  f"threads; {', '.join(f'{k} {v}' for k, v in m['versions'].items())}. Preset {doc['preset']}, "
                  f"random weights; prompt {_prompt_tokens(doc)} tokens; medians of {doc['workload']['runs']} runs."]
    if "cpu_flags" in m:
        lines.append(f"CPU features: {' '.join(m['cpu_flags']) or 'none of those listed'}; torch's CPU "
                     f"kernels: {m['torch_cpu_capability']}"
                     + (f", oneDNN up to {m['onednn_max_isa']}" if m.get("onednn_max_isa") else "")
                     + f"; unquantized precision {m.get('default_precision', 'bf16')}.")
    lines += _decode_bounds(doc)
    builds = sorted({r["system_info"] for r in doc["results"] if r.get("system_info")})
    lines += [f"llama.cpp build: {info}" for info in builds]
    kernels = doc.get("kernels") or {}
    if kernels and "error" not in kernels:
        for dtype in ("bf16", "fp32"):  # fp32 keys carry their name first
            few_rows = [kernel for key, kernel in kernels.items()
                        if "/rows<=" in key and key.startswith("fp32 ") == (dtype == "fp32")]
            counts = Counter(few_rows)
            if few_rows:
                lines.append(f"Few-row {dtype} kernels chosen on this machine: "
                             + ", ".join(f"{name} for {n} of {len(few_rows)} shape buckets"
                                         for name, n in sorted(counts.items())) + ".")
        vision = [f"{key.removeprefix('vision ')}: {kernel}" for key, kernel in kernels.items() if key.startswith("vision ")]
        if vision:
            lines.append("Vision tower choices: " + "; ".join(vision) + ".")
        int8 = [f"{key.removeprefix('int8 ')}: {kernel}" for key, kernel in kernels.items() if key.startswith("int8 ")]
        if int8:
            lines.append("int8 products (one-row: decoding; many-rows: the vision tower): " + "; ".join(int8) + ".")
        grouped = [f"{key.removeprefix('int8-g32 ')}: {kernel}" for key, kernel in kernels.items()
                   if key.startswith("int8-g32 ")]
        if grouped:
            lines.append("Group-wise int8 products (decoding): " + "; ".join(grouped) + ".")
        int4 = [f"{key.removeprefix('int4 ')}: {kernel}" for key, kernel in kernels.items() if key.startswith("int4 ")]
        if int4:
            lines.append("int4 products (decoding): " + "; ".join(int4) + ".")
        many = [f"{key.removeprefix('many-rows ')}: {kernel}" for key, kernel in kernels.items()
                if key.startswith("many-rows ")]
        if many:
            lines.append("Quantized products on many rows (prompts, the vision tower, the projector): "
                         + "; ".join(many) + ".")
    return "\n".join(lines)


def _decode_bounds(doc: dict) -> list[str]:
    """Each of our decode rates against the machine's bound: read bandwidth / weight bytes per token."""
    bandwidth = doc["machine"].get("read_bandwidth_gbs")
    rows = [r for r in doc["results"] if r.get("decode_bytes_per_token") and r.get("decode_tok_s")]
    if not bandwidth or not rows:
        return []
    parts = []
    for r in rows:
        bound = bandwidth * 1e9 / r["decode_bytes_per_token"]
        parts.append(f"ours {r['precision']} {r['decode_tok_s']:.1f} of {bound:.1f} tok/s "
                     f"({100 * r['decode_tok_s'] / bound:.0f} %)")
    return [f"Decode against the memory bound (read bandwidth {bandwidth:.1f} GB/s / weight bytes per token): "
            + ", ".join(parts) + "."]


def _prompt_tokens(doc: dict) -> str:
    counts = sorted({r["prompt_tokens"] for r in doc["results"] if "prompt_tokens" in r})
    return "/".join(map(str, counts)) or "?"


def write_json(doc: dict, path: Path) -> None:
    Path(path).write_text(json.dumps({**doc, "targets": targets(doc)}, indent=2) + "\n")


def write_png(doc: dict, path: Path) -> bool:
    """Bars of TTFT and decode speed per implementation; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in doc["results"] if "error" not in r and "skipped" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("ttft_ms", "decode_tok_s", "peak_rss_mb"),
                              ("time to first token (ms, lower is better)", "decode (tokens/s, higher is better)",
                               "peak resident memory (MB; ours: answering once)")):
        if key == "peak_rss_mb":  # ours' one-answer figure, the peers' whole-process one
            named = [(f"{r['impl']} {r['precision']}", r.get("answer_peak_rss_mb", r[key])) for r in rows if key in r]
        else:
            named = [(f"{r['impl']} {r['precision']}", r[key]) for r in rows if key in r]
        ax.bar([n for n, _ in named], [v for _, v in named], color="#4878a8")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8, labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        if key == "peak_rss_mb":
            ax.axhline(MEMORY_BUDGET_MB, color="#c44", linestyle="--", linewidth=1)
    fig.suptitle(f"omnivision bench, {doc['preset']} on {doc['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

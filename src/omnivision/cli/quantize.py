"""`omnivision quantize`: write a weight-only int8/int4 native checkpoint, and/or measure the loss.

`quantize SRC OUT --scheme S` writes the quantized checkpoint OUT; `--check` (with or without OUT)
compares the quantized model with the unquantized one on a fixed probe set (`quantize.check`).
`--check --language-only` does the comparison for a language-model GGUF alone, on text prompts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnivision.loader import BUNDLED, load
from omnivision.quantize import QuantSummary, parse_scheme, quantize_model
from omnivision.model.qwen2 import LanguageOnly
from omnivision.eval.quantization_quality import CheckResult, check_language_model, check_quantized, probe_items
from omnivision.quantize.scheme import parse_parts
from omnivision.weights.native import save_native
from omnivision.weights.release_read import load_language_model


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="quantize a model's weights to int8/int4 (and check the loss)")
    p.add_argument("source", nargs="?", default=str(BUNDLED),
                   help="any model source `run --model` accepts (default: the bundled nano model)")
    p.add_argument("out", nargs="?", help="native checkpoint directory to write")
    p.add_argument("--scheme", default="int8",
                   help="int8 (per row), int8-g32 (groups of 32: Q8_0's layout, this project's decode "
                        "kernel), int4 or int4-g<32|64|128|256>[-sym] (default int8)")
    p.add_argument("--parts", help="comma-separated model parts to quantize (default: all three)")
    p.add_argument("--head", action="store_true",
                   help="also quantize the output head (for a tied model: the shared embedding table)")
    p.add_argument("--check", action="store_true",
                   help="compare with the unquantized model: top-1 agreement and KL over greedy answers")
    p.add_argument("--scenes", type=int, default=6,
                   help="generated scenes in the --check probe set (default 6)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length in --check (default 48)")
    p.add_argument("--language-only", action="store_true",
                   help="SOURCE is a language-model .gguf alone (no mmproj): --check it on text prompts")
    p.add_argument("--json", metavar="FILE", help="also write the --check result and summary as JSON")
    p.set_defaults(handler=run)


def _print_summary(summary: QuantSummary) -> None:
    mib = 2 ** 20
    print(f"scheme {summary.scheme}, parts {','.join(summary.parts)}: {summary.layers} layers, "
          f"{summary.bytes_before / mib:.2f} MiB -> {summary.bytes_after / mib:.2f} MiB"
          f" ({len(summary.skipped)} Linear layers left unquantized"
          f"{f', {len(summary.int8_fallback)} stored int8 (no int4 group size fits)' if summary.int8_fallback else ''}"
          f"{'; output head quantized' if summary.head else ''})")


def _print_check(result: CheckResult) -> None:
    print(f"{'scheme':<10} {'probes':>6} {'positions':>9} {'top-1 agree':>11} {'mean KL (nats)':>14}")
    print(f"{result.scheme:<10} {result.probes:>6} {result.positions:>9} "
          f"{100 * result.top1_agreement:>10.2f}% {result.mean_kl:>14.3g}")


def _check_language_only(args: argparse.Namespace, scheme) -> int:
    if args.out is not None or not args.check:
        raise ValueError("--language-only only checks (give --check and no OUT)")
    reference, tokenizer = load_language_model(args.source)  # fp32, as for the full model
    quantized, _ = load_language_model(args.source)
    summary = quantize_model(LanguageOnly(quantized), scheme, ("language",), head=args.head)
    _print_summary(summary)
    result = check_language_model(reference, quantized, tokenizer, summary.scheme,
                                  max_new_tokens=args.max_new_tokens)
    _print_check(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"scheme": summary.scheme, "parts": ["language"],
                                               "source": str(args.source), "check": result.as_dict()},
                                              indent=2) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.out is None and not args.check:
        raise ValueError("give an output directory OUT, --check, or both")
    if args.scenes < 1 or args.max_new_tokens < 1:
        raise ValueError("--scenes and --max-new-tokens must be at least 1")
    if args.language_only and args.parts is not None:
        raise ValueError("--language-only quantizes the language model; drop --parts")
    scheme = parse_scheme(args.scheme)  # checked before loading
    parts = parse_parts(args.parts or "language,projector,vision")
    if args.head and "language" not in parts:
        raise ValueError("--head quantizes the language model's output head: include language in --parts")
    if args.language_only:
        return _check_language_only(args, scheme)
    # fp32, so that the check measures the quantization and not a bf16 reference
    vlm = load(args.source, dtype="float32")
    summary = quantize_model(vlm.model, scheme, parts, head=args.head)
    _print_summary(summary)
    if args.out is not None:
        print(f"wrote {save_native(vlm.model, vlm.tokenizer, args.out)}")
    report = {"scheme": summary.scheme, "parts": list(summary.parts), "layers": summary.layers,
              "bytes_before": summary.bytes_before, "bytes_after": summary.bytes_after}
    if args.check:
        reference = load(args.source, dtype="float32")
        items = probe_items(reference.config.vision.image_size, args.scenes)
        result = check_quantized(reference, vlm, summary.scheme, items, args.max_new_tokens)
        _print_check(result)
        report["check"] = result.as_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0

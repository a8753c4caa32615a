"""Fixed probes of the bundled nano model through every user-facing path, and their recorded outputs.

`run`, `chat`, `serve` (plain, streamed, logprobs, JSON output, n=2 sampled), `eval` (shapes tasks)
and `quantize --check` (whole model and `--language-only`) are driven as a user drives them, in
float32 on one thread, and what they print or return is collected into one JSON-able dict. The
recorded dict lives in `golden_answers.json` beside this file; `tests/test_golden_answers.py`
compares a fresh capture with it, so a refactoring that changes any answer or score fails.

Regenerate it (only when a change of answers is intended: a new bundled model or default precision)
with `python3 -m tests.golden_answers`, and say why in the commit.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sys
from pathlib import Path

import torch

from omnivision.cli.main import main
from omnivision.loader import BUNDLED, load

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / "assets" / "scene.png"
RECORDED = Path(__file__).with_name("golden_answers.json")
QUESTIONS = ("What shape is the object at the top left?", "What color is the object in the center?",
             "How many objects are there?", "Describe the image.")
DIGITS = 6
"""Floats are recorded to this many significant digits (the rounding only keeps the file readable)."""
RELATIVE = 1e-4
"""How far a float may be from its recorded value. float32 on one thread repeats itself exactly on
one machine, but torch's kernels differ between CPUs (AMX, AVX-512, AVX2) in the last bits: on the
AMX Xeon a logprob recorded on the EPYC came out -0.758272 for -0.758274, a KL 4.87856e-06 for
4.87746e-06. Text, token ids and counts must match exactly."""


def same_outputs(got, want, where: str = "") -> list[str]:
    """Where `got` differs from `want`: any difference in structure, text or integers, or a float off
    by more than `RELATIVE` of the recorded value (and 1e-9 absolute, for values near zero)."""
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if abs(got - want) <= RELATIVE * abs(want) + 1e-9 else [f"{where}: {got} != {want}"]
    if isinstance(want, dict) and isinstance(got, dict):
        if got.keys() != want.keys():
            return [f"{where}: keys {sorted(got)} != {sorted(want)}"]
        return [d for k in want for d in same_outputs(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items != {len(want)}"]
        return [d for n, (g, w) in enumerate(zip(got, want)) for d in same_outputs(g, w, f"{where}[{n}]")]
    return [] if got == want and type(got) is type(want) else [f"{where}: {got!r} != {want!r}"]


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cli(argv: list[str], stdin: str = "") -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        old_stdin, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            assert main([str(a) for a in argv]) == 0, argv
        finally:
            sys.stdin = old_stdin
    return out.getvalue()


def run_probes() -> dict:
    answers = []
    for question in QUESTIONS:
        answers.append(json.loads(_cli(["run", "--dtype", "float32", "--json", "--image", SCENE, question])))
    answers.append(json.loads(_cli(["run", "--dtype", "float32", "--json", "What is a circle?"])))
    answers.append(json.loads(_cli(["run", "--dtype", "float32", "--json", "--temperature", "0.8",
                                    "--top-k", "20", "--seed", "3", "--max-new-tokens", "12",
                                    "--image", SCENE, QUESTIONS[3]])))
    return {"answers": answers}


def chat_probes() -> dict:
    out = _cli(["chat", "--dtype", "float32", "--image", SCENE],
               stdin=f"{QUESTIONS[0]}\n{QUESTIONS[1]}\n/reset\n{QUESTIONS[2]}\n/quit\n")
    return {"transcript": out}


def _content(reply: dict) -> list[str]:
    return [c["message"]["content"] for c in reply["choices"]]


def serve_probes() -> dict:
    from starlette.testclient import TestClient

    from omnivision.serve.app import create_app

    url = "data:image/png;base64," + base64.b64encode(SCENE.read_bytes()).decode()

    def user(text: str, image: bool = True) -> list[dict]:
        parts = [{"type": "text", "text": text}]
        if image:
            parts.insert(0, {"type": "image_url", "image_url": {"url": url}})
        return [{"role": "user", "content": parts}]

    vlm = load(BUNDLED, dtype="float32")
    out: dict = {}
    with TestClient(create_app(vlm), base_url="http://localhost") as client:
        def post(**body) -> dict:
            body = {"model": "omnivision", "temperature": 0, **body}  # OpenAI's default samples
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        out["plain"] = [_content(post(messages=user(q))) for q in QUESTIONS]
        out["multi_turn"] = _content(post(messages=[
            *user(QUESTIONS[0]), {"role": "assistant", "content": "triangle"},
            {"role": "user", "content": "And the one in the center?"}]))
        out["system"] = _content(post(messages=[{"role": "system", "content": "Answer in one word."},
                                                *user(QUESTIONS[1])]))
        reply = post(messages=user(QUESTIONS[3]), logprobs=True, top_logprobs=2, max_tokens=8)
        out["logprobs"] = _rounded([[e["token"], e["logprob"], [[a["token"], a["logprob"]] for a in e["top_logprobs"]]]
                                    for e in reply["choices"][0]["logprobs"]["content"]])
        out["sampled_n2"] = _content(post(messages=user(QUESTIONS[3]), n=2, temperature=0.9, seed=11,
                                          max_tokens=16))
        out["json_object"] = _content(post(messages=user("Describe the image as JSON."),
                                           response_format={"type": "json_object"}, max_tokens=48))
        out["usage"] = post(messages=user(QUESTIONS[2]))["usage"]
        with client.stream("POST", "/v1/chat/completions",
                           json={"model": "omnivision", "messages": user(QUESTIONS[3]), "stream": True,
                                 "temperature": 0}) as r:
            pieces = []
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    pieces.append(delta.get("content") or "")
        out["streamed"] = "".join(pieces)
    return out


def eval_probes(tmp: Path) -> dict:
    from omnivision.data.shapes_dataset import generate_shapes_dataset

    data = tmp / "shapes"
    generate_shapes_dataset(data, 12, 4242, image_size=load(BUNDLED).config.vision.image_size)
    out = tmp / "eval-out"
    _cli(["eval", "--dtype", "float32", "--device", "cpu", "--tasks", "shapes_qa,shapes_pope",
          "--data", data, "--out", out, "--limit", "10", "--batch", "4", "--no-progress"])
    results = json.loads((out / "results.json").read_text())
    predictions = {}
    for path in sorted(out.rglob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        predictions[str(path.relative_to(out))] = [[r.get("question_id", r.get("id")), r.get("prediction")]
                                  for r in rows if "prediction" in r]
    metrics = {name: task["metrics"] for name, task in results["tasks"].items()}
    return {"predictions": predictions, "metrics": _rounded(metrics)}


def quantize_probes(tmp: Path) -> dict:
    report = tmp / "check.json"
    _cli(["quantize", "--scheme", "int4-g32", "--check", "--scenes", "2", "--max-new-tokens", "16",
          "--json", report])
    whole = json.loads(report.read_text())["check"]
    gguf = tmp / "gguf"
    _cli(["convert", BUNDLED, gguf, "--to", "gguf", "--dtype", "F32"])
    language = next(p for p in gguf.glob("*.gguf") if "mmproj" not in p.name)
    _cli(["quantize", language, "--language-only", "--check", "--scheme", "int8", "--max-new-tokens", "16",
          "--json", report])
    return {"whole": _rounded(whole), "language_only": _rounded(json.loads(report.read_text())["check"])}


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def capture(tmp: Path) -> dict:
    """Every probe's output, in float32 on one thread."""
    with one_thread():
        return {"run": run_probes(), "chat": chat_probes(), "serve": serve_probes(),
                "eval": eval_probes(tmp), "quantize": quantize_probes(tmp)}


if __name__ == "__main__":
    import os
    import tempfile

    # as the test suite runs (`tests/conftest.py`): every kernel choice its first candidate, not the
    # one timed fastest on this machine, whose other rounding moves the tiny KL of a good model
    os.environ["OMNIVISION_KERNEL_TUNING"] = "off"
    with tempfile.TemporaryDirectory() as tmp:
        RECORDED.write_text(json.dumps(capture(Path(tmp)), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {RECORDED}")

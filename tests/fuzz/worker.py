"""The worker process: imports omnivision once, then runs fuzz jobs one at a time under a memory limit.

Run as `python -m tests.fuzz.worker --memory BYTES` by `tests.fuzz.runner`; it is not for people.
Jobs arrive on stdin and results leave on stdout, one JSON object a line:

- `{"argv": [...]}` calls `omnivision.cli.main.main(argv)` in this process, as the `omnivision`
  command would in its own, and returns its exit status, what it wrote to stdout and stderr, and
  the exception that escaped it, if one did (with its traceback);
- `{"body": BASE64, "model": DIR}` posts the body to `/v1/chat/completions` of an app serving the
  model in DIR (built on the first such job, through `tests.serve.conftest.client_for`), and returns
  the status and the response text;
- `{"probe": ...}` misbehaves on purpose (sleep, allocate, die, write a file, print), so that the
  harness's own tests can show that each kind of failure is caught.

Memory is bounded with RLIMIT_AS, set before torch is imported: an allocation past it raises
MemoryError (or torch's "can't allocate memory") instead of taking the machine. Output written
below Python (by C libraries) to the process's file descriptors 1 and 2 is caught as well and
counted as stderr: a real `omnivision` process would show it on the terminal.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import resource
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import ExitStack, redirect_stderr, redirect_stdout


class Worker:
    def __init__(self, protocol_out) -> None:
        self.out = protocol_out
        self.stray = tempfile.TemporaryFile()  # noqa: SIM115 - fds 1 and 2 point here for the life of the worker
        for fd in (1, 2):
            os.dup2(self.stray.fileno(), fd)
        self.clients: dict[str, object] = {}
        self.stack = ExitStack()

    def serve(self) -> None:
        self.send({"ready": True})
        for line in sys.stdin:
            self.send(self.run(json.loads(line)))

    def send(self, message: dict) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def run(self, job: dict) -> dict:
        if "body" in job:
            return self.post(job)
        call = (lambda: probe(job)) if "probe" in job else (lambda: self.cli(job["argv"]))
        return self.captured(call)

    def cli(self, argv: list[str]) -> int:
        from omnivision.cli.main import main

        try:
            return main(argv)
        except SystemExit as e:  # argparse's own errors; not expected, the argv is always valid
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)

    def captured(self, call) -> dict:
        """Run `call` as one command: fresh warning registries, stdout and stderr caught."""
        warnings.simplefilter("default")  # changing the filters empties every "shown once" registry
        self.stray.seek(0)
        self.stray.truncate()
        out, err = io.StringIO(), io.StringIO()
        result = {"rc": None, "exception": None, "exception_type": None}
        with redirect_stdout(out), redirect_stderr(err):
            try:
                result["rc"] = call()
            except BaseException as e:  # noqa: BLE001 - anything escaping main() is what we look for
                result["exception_type"] = type(e).__name__
                result["exception"] = "".join(traceback.format_exception(e))[-4000:]
        self.stray.seek(0)
        stray = self.stray.read().decode("utf-8", "replace")
        result.update(stdout=out.getvalue()[-4000:], stderr=(err.getvalue() + stray)[:20000])
        return result

    def post(self, job: dict) -> dict:
        client = self.client(job["model"])
        try:
            r = client.post("/v1/chat/completions", content=base64.b64decode(job["body"]),
                            headers={"content-type": "application/json"})
        except BaseException as e:  # noqa: BLE001 - the test client re-raises nothing (raise_server_exceptions=False)
            return {"status": None, "exception_type": type(e).__name__,
                    "exception": "".join(traceback.format_exception(e))[-4000:]}
        return {"status": r.status_code, "response": r.text[:2**20], "exception": None}  # whole, if sane

    def client(self, model: str):
        if model not in self.clients:
            from omnivision.loader import load
            from omnivision.serve.settings import ServerSettings
            from tests.serve.conftest import client_for

            # a generation is cut at one second (finish_reason "length"): a mutated max_tokens may ask
            # for the whole context, and the fuzz is about input handling, not answers
            settings = ServerSettings(request_timeout_s=1.0)
            self.clients[model] = self.stack.enter_context(client_for(load(model, dtype="float32"), settings))
        return self.clients[model]


def probe(job: dict) -> int:
    """Misbehave as the job asks (for the harness's own tests)."""
    kind = job["probe"]
    if kind == "sleep":
        time.sleep(job["seconds"])
    elif kind == "allocate":
        bytearray(job["bytes"])
    elif kind == "die":
        os._exit(job.get("status", 3))
    elif kind == "write":
        with open(job["file"], "ab") as f:
            f.write(b"x")
    elif kind == "raise":
        raise KeyError(job.get("message", "boom"))
    elif kind == "print":
        print(job["stderr"], file=sys.stderr)
        os.write(2, job.get("stray", "").encode())
    return job.get("rc", 0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--memory", type=int, required=True, help="address-space limit in bytes")
    args = p.parse_args()
    resource.setrlimit(resource.RLIMIT_AS, (args.memory, args.memory))
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    worker = Worker(protocol_out)
    import torch

    torch.set_num_threads(1)  # many small cases; leave the other cores alone
    import omnivision.cli.main  # noqa: F401 - imported once here, not in the first case's time

    worker.serve()


if __name__ == "__main__":
    main()

"""Exact resumption: a run interrupted (exception, SIGKILL, crash inside a checkpoint write) and
resumed ends with weights bit-identical to an uninterrupted run on CPU, and its metrics log holds
each step once, with the same values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from omnivision.train.checkpoint import CRASH_ENV, latest_checkpoint
from omnivision.train.config import TrainConfig
from omnivision.train.loop import train

CFG = dict(steps=10, batch_size=4, grad_accum=2, save_every=3, keep_last=2, log_every=1, lr=1e-2,
           warmup_steps=2, weight_decay=0.1, precision="fp32", device="cpu", progress=False)


def _records(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _same_metrics(a, b):
    strip = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "samples_per_s"} for r in b]


def _script_args(out_dir, resume=False):
    return json.dumps({"cfg": {**CFG, "out_dir": str(out_dir)}, "resume": resume,
                       "weights_out": str(out_dir / "final.safetensors")})


def _run_script(toy, out_dir, resume=False, env=None):
    return subprocess.run([sys.executable, toy.__file__, _script_args(out_dir, resume)],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)


def _assert_same_weights(a, b):
    wa, wb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = _run_script(toy, out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_in_process_interrupt_and_resume_is_bit_identical(toy, tmp_path):
    straight = toy.make_model()
    cfg = TrainConfig(**CFG, out_dir=str(tmp_path / "straight"))
    train(straight, toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg, trainable=toy.not_embed)

    cfg = TrainConfig(**CFG, out_dir=str(tmp_path / "resumed"))
    with pytest.raises(toy.Interrupted):  # dies at the start of step 7, after the step-6 checkpoint
        train(toy.make_model(), toy.RegressionTask(raise_after=6 * 2), toy.make_dataset(), toy.collate,
              cfg, trainable=toy.not_embed)
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step_00000006"
    resumed = toy.make_model()
    result = train(resumed, toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg,
                   trainable=toy.not_embed, resume=True)
    assert result.checkpoint_dir.name == "step_00000010"
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    _same_metrics(_records(tmp_path / "straight"), _records(tmp_path / "resumed"))

    again = train(toy.make_model(), toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg,
                  trainable=toy.not_embed, resume=True)  # already finished: nothing to do
    assert again.checkpoint_dir == result.checkpoint_dir and again.final_loss == result.final_loss
    changed = TrainConfig(**{**CFG, "lr": 2e-2}, out_dir=str(tmp_path / "resumed"))
    with pytest.raises(ValueError, match="lr: 0.01 -> 0.02"):
        train(toy.make_model(), toy.RegressionTask(), toy.make_dataset(), toy.collate, changed,
              trainable=toy.not_embed, resume=True)


@pytest.mark.long
def test_sigkill_mid_run_then_resume(toy, tmp_path, reference):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, toy.__file__, _script_args(out)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TOY_HANG_AFTER_CALLS": str(7 * 2)})
    try:
        for line in proc.stdout:  # hangs inside step 8 (steps 1-7 logged, checkpoint at 6)
            if line.strip() == "HANG":
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [r["step"] for r in _records(out)] == list(range(1, 8))
    assert latest_checkpoint(out / "checkpoints").name == "step_00000006"

    done = _run_script(toy, out, resume=True)
    assert done.returncode == 0, done.stderr
    _assert_same_weights(out, reference)
    assert [r["step"] for r in _records(out)] == list(range(1, 11))  # 7 was re-logged, not duplicated
    _same_metrics(_records(out), _records(reference))


@pytest.mark.long
def test_crash_inside_a_checkpoint_write_then_resume(toy, tmp_path, reference):
    out = tmp_path / "crashed"
    proc = _run_script(toy, out, env={CRASH_ENV: "6"})
    assert proc.returncode == 1
    ckpts = out / "checkpoints"
    partial = [p for p in ckpts.iterdir() if p.name.startswith(".tmp-step_00000006")]
    assert len(partial) == 1 and (partial[0] / "trainable.safetensors").is_file()
    assert not (partial[0] / "state.json").exists()
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == ["step_00000003"]
    assert latest_checkpoint(ckpts).name == "step_00000003"

    done = _run_script(toy, out, resume=True)
    assert done.returncode == 0, done.stderr
    _assert_same_weights(out, reference)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000009", "step_00000010"]
    assert (ckpts / "step_00000010" / "marker-rank0").is_file()  # on_checkpoint ran on the final one
    _same_metrics(_records(out), _records(reference))

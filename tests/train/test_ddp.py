"""Two CPU processes under torchrun (gloo) match one process with the same global batch.

The toy script runs with batch_size=4 per process on 2 processes, against an in-process run with
batch_size=8: the data mapping gives both the same micro-batches (train/loop.py), the per-sample
mean loss makes DDP's gradient average equal to the single large-batch gradient, so the final
weights agree to float rounding. Gradient accumulation (DDP `no_sync` / FSDP gradient-sync off) is on
the path, and so is resumption: the first launch dies inside the step-6 checkpoint write (rank 0
exits; torchrun stops rank 1), the second resumes from step 3 (states broadcast from rank 0). FSDP2
runs on CPU with gloo too, so it is checked the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from omnivision.train.checkpoint import CRASH_ENV, latest_checkpoint
from omnivision.train.config import TrainConfig
from omnivision.train.loop import train

pytestmark = pytest.mark.long

CFG = dict(steps=6, grad_accum=2, save_every=3, keep_last=5, log_every=1, lr=1e-2, weight_decay=0.1,
           warmup_steps=2, precision="fp32", device="cpu", progress=False)


@pytest.fixture(scope="module")
def single(toy, tmp_path_factory):
    model = toy.make_model()
    cfg = TrainConfig(**CFG, batch_size=8, out_dir=str(tmp_path_factory.mktemp("single")))
    result = train(model, toy.RegressionTask(), toy.make_dataset(), toy.collate, cfg,
                   trainable=toy.not_embed)
    return model.state_dict(), result


@pytest.mark.parametrize("how", ["ddp", "fsdp"])
def test_two_processes_match_one(toy, tmp_path, single, how):
    out = tmp_path / how
    args = {"cfg": {**CFG, "batch_size": 4, "distributed": how, "out_dir": str(out)},
            "weights_out": str(tmp_path / "final.safetensors")}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}

    def torchrun(resume, extra_env):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   "2", toy.__file__, json.dumps({**args, "resume": resume})]
        return subprocess.run(command, env={**env, **extra_env}, capture_output=True, text=True,
                              timeout=180)

    crashed = torchrun(False, {CRASH_ENV: "6"})
    assert crashed.returncode != 0
    latest = latest_checkpoint(out / "checkpoints")
    assert latest is not None and latest.name == "step_00000003", crashed.stderr[-3000:]
    proc = torchrun(True, {})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    weights = load_file(str(tmp_path / "final.safetensors"))
    expected, result = single
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=name)

    # only rank 0 wrote: one metrics line per step, one marker per checkpoint, no leftovers
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[-1]["loss"] == pytest.approx(result.final_loss, rel=1e-5)
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_00000003", "step_00000006"]
    for ckpt in ckpts:
        assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("marker")) == ["marker-rank0"]
    # on_checkpoint got the whole model (under FSDP gathered from the shards), not rank 0's shard
    given = load_file(str(ckpts[-1] / "state.safetensors"))
    assert given.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(given[name], value, rtol=0, atol=1e-6, msg=name)
    assert (out / "curves.png").is_file()

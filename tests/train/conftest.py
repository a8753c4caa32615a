"""The toy training task shared by the loop, resume and DDP tests.

The toy lives in one source file (`TOY_SOURCE`) that is written to a temporary directory, imported by
the in-process tests and run as a script (plain, killed, or under torchrun) by the others, so every
run trains exactly the same model on the same data. The model has a frozen input layer (`embed`),
two residual blocks under `language.model.layers` (what FSDP shards) and a head; the loss is a mean
over the samples of the micro-batch, so means over micro-batches and processes combine exactly.

Script usage: `python toy_train.py '<json>'` with keys `cfg` (TrainConfig fields), `resume` and
`weights_out` (a safetensors file of the final full state dict, written by rank 0). Environment:
`TOY_HANG_AFTER_CALLS=k` prints HANG and sleeps on the (k+1)-th loss call (for SIGKILL tests).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOY_SOURCE = '''
"""Toy regression task for tests/train (written by tests/train/conftest.py)."""
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file
from torch import nn

from omnivision import process_group
from omnivision.train.config import TrainConfig
from omnivision.train.loop import train


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.linear(x))


class Toy(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.language = nn.Module()
        self.language.model = nn.Module()
        self.language.model.layers = nn.ModuleList([Block(width) for _ in range(2)])
        self.head = nn.Linear(width, 2)
        self.checkpointing = False

    def set_gradient_checkpointing(self, on):
        self.checkpointing = on

    def forward(self, x):
        h = self.embed(x)
        for layer in self.language.model.layers:
            h = layer(h)
        return self.head(h)


def make_model(seed=0):
    torch.manual_seed(seed)
    return Toy()


def make_dataset(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.randn(4, 2, generator=g)
    y = torch.sin(x) @ w
    return [(x[i], y[i]) for i in range(n)]


def collate(items):
    return {"x": torch.stack([a for a, _ in items]), "y": torch.stack([b for _, b in items])}


def not_embed(model):
    return [(n, p) for n, p in model.named_parameters() if not n.startswith("embed.")]


class Interrupted(Exception):
    pass


class RegressionTask:
    def __init__(self, hang_after=None, raise_after=None):
        self.calls = 0
        self.hang_after, self.raise_after = hang_after, raise_after

    def loss(self, model, batch):
        if self.calls == self.hang_after:
            print("HANG", flush=True)
            time.sleep(600)
        if self.calls == self.raise_after:
            raise Interrupted(f"after {self.calls} loss calls")
        self.calls += 1
        pred = model(batch["x"])
        loss = ((pred - batch["y"]) ** 2).mean()
        return loss, {"mae": float((pred - batch["y"]).detach().abs().mean())}


def full_state(model):
    if torch.distributed.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))
    return model.state_dict()


def marker(model, path, state):
    """on_checkpoint: a marker naming the rank, and the full state dict it was given."""
    (path / f"marker-rank{os.environ.get('RANK', '0')}").write_text("x")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path / "state.safetensors"))


def main():
    args = json.loads(sys.argv[1])
    hang = os.environ.get("TOY_HANG_AFTER_CALLS")
    model = make_model()
    result = train(model, RegressionTask(hang_after=int(hang) if hang else None), make_dataset(),
                   collate, TrainConfig(**args["cfg"]), trainable=not_embed,
                   resume=args.get("resume", False), on_checkpoint=marker)
    state = full_state(model)
    if process_group.is_main():
        save_file({k: v.detach().contiguous() for k, v in state.items()}, args["weights_out"])
        print("FINAL", result.final_loss, flush=True)
    process_group.cleanup()
    # Leave without the interpreter's teardown: there, now and then (about 1 run in 8 here), a
    # gloo/FSDP background thread still joinable aborts the process ("terminate called without an
    # active exception") after the work is done and written, which would fail the launch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """The imported toy module; `toy.__file__` is the script to run in a subprocess."""
    path = Path(tmp_path_factory.mktemp("toy")) / "toy_train.py"
    path.write_text(TOY_SOURCE)
    spec = importlib.util.spec_from_file_location("toy_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_train"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fp32_cfg():
    """TrainConfig overrides every toy test uses: fp32 on CPU, no progress bar."""
    return {"precision": "fp32", "device": "cpu", "progress": False}


@pytest.fixture(scope="session")
def make_workspace():
    """A function (root, scenes, seed) -> root that writes a generated dataset under root/data and a
    random tiny model with the byte-level tokenizer under root/start: what the recipe tests start from."""
    from omnivision.data.shapes_dataset import generate_shapes_dataset
    from omnivision.processing.byte_tokenizer import byte_level_tokenizer
    from omnivision.weights.random_init import write_random_checkpoint

    def make(root: Path, scenes: int, seed: int) -> Path:
        generate_shapes_dataset(root / "data", scenes, seed=seed)
        tok = root / "tokenizer.json"
        byte_level_tokenizer().backend.save(str(tok))
        write_random_checkpoint("tiny", root / "start", tokenizer_file=tok, seed=0)
        return root

    return make

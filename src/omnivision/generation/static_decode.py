"""Decoding with fixed shapes: one step captured as a CUDA graph and replayed for every token.

On a GPU one decode step of the 0.5B decoder is several hundred small kernels, and launching them
costs more than their work; replaying a captured graph launches them all at once. A graph replays
fixed addresses and shapes, so the step here works on buffers it owns: the tokens, the rotary
positions, the KV cache's write position (a tensor: `model.kv_cache.PositionedWrite`) and a mask of
the written positions; attention reads the whole cache under that mask, and the positions advance
inside the graph. A `StaticDecoder` serves one batch size and one cache length (rounded up to
`LENGTH_BUCKET`); finished ones are kept with the model for later requests of the same shape, so a
graph is captured once per shape and process.

On CUDA the step is also compiled (`torch.compile`, shapes dynamic so that one compilation serves
every batch size and cache length; its caches on disk make later processes start faster) before it
is captured: inductor fuses the norms, rotary and activation arithmetic into few kernels, and the
replay then launches fewer of them (measured on an H200: eager steps 44 tok/s, graph 355, compiled
graph 666, transformers' compiled static-cache `generate` 373; README). `OMNIVISION_COMPILE=off`
captures the eager step; where compiling fails (no compiler) it falls back to that with a warning.

Off CUDA the same step runs eagerly (the tests check it token for token against
`generate.decode_step`); `generate_steps` takes this path on CUDA only.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from contextlib import contextmanager
from typing import Iterator

import torch

from omnivision.model.kv_cache import PositionedWrite
from omnivision.kernels.compiled_dot import compile_allowed
from omnivision.model.qwen2 import Qwen2ForCausalLM

LENGTH_BUCKET = 256
"""Cache lengths are rounded up to a multiple of this, so requests of similar length share a graph."""
KEEP_PER_SHAPE = 2
"""Idle decoders kept per (batch, length): one per request decoding at the same time, up to this."""
WARMUP_STEPS = 3
"""Steps run before a capture (compilation and lazy initialisation must not happen inside it)."""


class StaticDecoder:
    """The buffers, the step and (on CUDA) the captured graph for one batch size and cache length."""

    def __init__(self, lm: Qwen2ForCausalLM, batch: int, max_len: int, capture: bool,
                 compile: bool = False) -> None:
        device = lm.model.norm.weight.device
        self.lm, self.max_len, self.capture = lm, max_len, capture
        self.run_step = _compiled_step() if compile else StaticDecoder._step
        self.cache = lm.new_cache(batch, max_len)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)  # [B]
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)  # [B, 1]
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # the cache's write position
        self.written = torch.zeros(batch, max_len, dtype=torch.bool, device=device)  # [B, L]
        self.length = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None  # [B, V], the graph's output buffer

    def _step(self) -> torch.Tensor:
        """One token per row from the buffers; advances the positions. Returns logits [B, V]."""
        self.written.index_fill_(1, self.index, True)
        view = PositionedWrite(self.cache, self.index)
        hidden = self.lm(self.lm.embed(self.tokens[:, None]), self.positions, cache=view,
                         mask=self.written[:, None, None, :])  # [B, 1, D]; index += 1
        self.positions.add_(1)
        return self.lm.logits(hidden[:, -1])

    def start(self, length: int, next_positions: torch.Tensor, key_valid: torch.Tensor | None) -> None:
        """Take over after a prefill of `length` positions into `self.cache`: next_positions [B, 1],
        key_valid [B, length] bool (None: no row padded)."""
        self.length = length
        self.index.fill_(length)
        self.positions.copy_(next_positions)
        self.written.zero_()
        self.written[:, :length] = True if key_valid is None else key_valid

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens [B] and return the logits [B, V] of the next ones."""
        if self.length >= self.max_len:
            raise ValueError(f"KV cache overflow: {self.length + 1} positions needed, {self.max_len} allocated")
        self.tokens.copy_(tokens)
        self.length += 1
        if self.capture and self.graph is None:
            self._capture()
        if self.graph is None:
            return self.run_step(self)
        self.graph.replay()
        return self.graph_logits.clone()

    def _capture(self) -> None:
        """Warm up (compiling, where asked), then record one step; without a compiler, record the
        eager step. Warm-up steps write only the last cache slot, which a real step writes before
        any mask lets it be read; the buffers are restored afterwards."""
        try:
            self._record()
        except Exception as err:  # noqa: BLE001: inductor raises many kinds; the eager step remains
            if self.run_step is StaticDecoder._step:
                warnings.warn(f"decoding without a CUDA graph: capture failed ({err})", stacklevel=3)
                self.capture = False
                return
            warnings.warn(f"decoding without torch.compile: {type(err).__name__}: {err}", stacklevel=3)
            self.run_step = StaticDecoder._step
            self._capture()

    def _record(self) -> None:
        saved = [t.clone() for t in (self.index, self.positions, self.written)]

        def restore() -> None:
            for buffer, value in zip((self.index, self.positions, self.written), saved):
                buffer.copy_(value)

        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.index.fill_(self.max_len - 1)
                    self.run_step(self)
            torch.cuda.current_stream().wait_stream(side)
            restore()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.graph_logits = self.run_step(self)
            self.graph = graph
        finally:
            restore()


_compiled = None


def _compiled_step():
    """`StaticDecoder._step` under `torch.compile`, made once per process (dynamic shapes: batch
    sizes and cache lengths do not recompile)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(StaticDecoder._step, fullgraph=True, dynamic=True)
    return _compiled


_idle: weakref.WeakKeyDictionary[Qwen2ForCausalLM, dict[tuple, list[StaticDecoder]]] = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()


def wanted(device: torch.device) -> bool:
    """Whether `generate_steps` decodes with fixed shapes on this device."""
    return device.type == "cuda"


@contextmanager
def static_decoder(lm: Qwen2ForCausalLM, batch: int, max_len: int) -> Iterator[StaticDecoder | None]:
    """A decoder for `batch` rows of up to `max_len` positions, or None where `wanted` says no;
    given back for reuse when the block ends."""
    device = lm.model.norm.weight.device
    if not wanted(device):
        yield None
        return
    length = -(-max_len // LENGTH_BUCKET) * LENGTH_BUCKET
    key = (batch, length, lm.model.norm.weight.dtype)  # a model moved to another dtype gets new caches
    with _lock:
        idle = _idle.setdefault(lm, {}).setdefault(key, [])
        decoder = idle.pop() if idle else None
    if decoder is None:
        cuda = device.type == "cuda"
        decoder = StaticDecoder(lm, batch, length, capture=cuda,
                                compile=cuda and compile_allowed())
    try:
        yield decoder
    finally:
        with _lock:
            if len(idle) < KEEP_PER_SHAPE:
                idle.append(decoder)

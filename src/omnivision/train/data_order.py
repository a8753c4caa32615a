"""Which samples each micro-batch holds: `DataOrder`, a pure function of (step, micro-step, rank).

The stream. Samples are read as one endless stream: position p is `perm_e[p % N]` with
`e = p // N` and `perm_e = randperm(N, generator=manual_seed(seed + e))` (batches may straddle
epochs; nothing is dropped). With B = batch_size, A = grad_accum and W processes, micro-step m of
optimizer step s (both 0-based) covers the W*B positions starting at `g = (s*A + m) * W*B` (a
"window"), and process r takes the contiguous slice `[g + r*B, g + (r+1)*B)`. A single process
with batch_size W*B therefore sees exactly the same micro-batches as W processes with B.

Grouping by length (`group > 0`). A batch is padded to its longest sample, so random batches of
samples whose lengths vary two- to fourfold spend much of their compute on padding (the nano
recipe's conversations: half of every batch). With grouping, each epoch's permutation is cut along
the window boundaries into runs of `group` windows; each run is sorted by length and its windows
are put back in a random order (drawn from the same generator). Each sample is still read once per
epoch; a batch holds samples of similar length; the order of lengths over the steps stays random.
The positions of an epoch outside its whole windows (its head and tail, which share windows with
the epochs around it) stay in random order, so a data set smaller than one window is not grouped
at all. A loss averaged over a batch's tokens then gives the tokens of short samples more weight
than random batches do (their batches hold fewer tokens). The same idea as the
`group_by_length` sampler of Hugging Face's Trainer, aligned here to the windows so that it holds
under any world size and after any resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class DataOrder:
    """Sample indices as a pure function of (step, micro-step, rank); see the module docstring.

    `lengths` (one per sample) and `group` turn on grouping by length; `window` is then the global
    micro-batch W*B that `indices` must be called with."""

    def __init__(self, n: int, seed: int, *, lengths: Sequence[int] | None = None, group: int = 0,
                 window: int = 1) -> None:
        if group < 0 or window < 1:
            raise ValueError(f"group must be >= 0 and window >= 1, got {group} and {window}")
        if group and (lengths is None or len(lengths) != n):
            raise ValueError(f"grouping by length needs one length per sample ({n}), got "
                             f"{'none' if lengths is None else len(lengths)}")
        self.n, self.seed, self.group, self.window = n, seed, group, window
        self.lengths = list(lengths) if group else None
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            self._perms[epoch] = self._grouped(perm, epoch, g) if self.group else perm
        return self._perms[epoch]

    def _grouped(self, perm: list[int], epoch: int, g: torch.Generator) -> list[int]:
        """`perm` with each run of `group` whole windows sorted by length and its windows shuffled."""
        w = self.window
        head = min((-epoch * self.n) % w, self.n)  # positions before the epoch's first window boundary
        whole = head + (self.n - head) // w * w  # the epoch's last whole window ends here
        out = perm[:head]
        for start in range(head, whole, self.group * w):
            run = sorted(perm[start:min(start + self.group * w, whole)], key=self.lengths.__getitem__)
            windows = [run[i:i + w] for i in range(0, len(run), w)]
            for k in torch.randperm(len(windows), generator=g).tolist():
                out += windows[k]
        return out + perm[whole:]

    def indices(self, step: int, micro: int, rank: int, batch_size: int, grad_accum: int,
                world_size: int) -> list[int]:
        if self.group and batch_size * world_size != self.window:
            raise ValueError(f"grouped by windows of {self.window} samples, asked for "
                             f"{world_size} x {batch_size}")
        start = (step * grad_accum + micro) * world_size * batch_size + rank * batch_size
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + batch_size)]

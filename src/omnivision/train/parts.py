"""Which parts of an OmniVision model learn in a stage: selection by component name.

Components: `vision`, `projector`, `language`. A stage names the ones that learn; every other
parameter is frozen by the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

COMPONENTS = ("vision", "projector", "language")


def trainable_parts(names: Sequence[str]) -> Callable[[nn.Module], list[tuple[str, nn.Parameter]]]:
    unknown = set(names) - set(COMPONENTS)
    if unknown or not names:
        raise ValueError(f"trainable parts must be a non-empty subset of {COMPONENTS}, got {list(names)}")

    def select(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in model.named_parameters()
                if name.split(".", 1)[0] in names]

    return select

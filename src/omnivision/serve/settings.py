"""Everything an operator can set on the server, with the defaults of docs/server-security.md.

One frozen dataclass, filled by `omnivision serve`'s flags and read by the app, the image intake
and the generation batch. The defaults and the reason for each: `docs/server-security.md` section 6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 2**20


@dataclass(frozen=True)
class Limits:
    body_bytes: int = 16 * MiB
    """Largest request body; more is refused with 413 before it is all read."""
    body_read_s: float = 30.0
    """A chat request's body must arrive within this many seconds of its place being reserved
    (408 otherwise), so that a slow uploader cannot hold a place."""
    image_bytes: int = 10_000_000
    """Largest encoded image (checked on the base64 length before decoding)."""
    max_pixels: int = 4096 * 4096
    """Largest decoded image, checked from the header before any pixel is decoded."""
    images_per_request: int = 4
    prompt_bytes: int = 1 * MiB
    """Text of all messages together, checked before tokenizing."""
    max_n: int = 4
    """Most choices (`n`) per request."""
    max_stop: int = 8
    max_top_logprobs: int = 20


@dataclass(frozen=True)
class RemoteMedia:
    """Fetching `image_url`s over the network: off unless hosts are allowed."""

    allowed_hosts: tuple[str, ...] = ()
    """Exact host names that may be fetched (https only); empty turns fetching off."""
    timeout_s: float = 5.0
    max_redirects: int = 5

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_hosts)


@dataclass(frozen=True)
class ServerSettings:
    model_name: str = "omnivision"
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    """Extra Host header names accepted when no API key is set (localhost forms always are)."""
    max_batch: int = 8
    """Generations that run at once; above 1 they are decoded together in one batch, each joining
    and leaving between steps (`OmniVision.start_batching`). `--slots` is the old name. The default
    is measured (README, Server): on both 2-core CPUs of this project, 8 gave the most tokens/s at
    every concurrency from 1 to 16 (one sequence alone decodes as fast as outside a batch); its cost
    is the KV cache, max_batch + 1 rows of `batch_context` positions (432 MiB for the 968M in bf16)."""
    batch_context: int = 4096
    """Positions per sequence in the batch (its KV cache is sized for max_batch + 1 of them up front);
    a request that needs more runs on its own, and an answer without max_tokens is bounded by it."""
    queue: int = 64
    """Requests that may wait for a place in the batch; more are refused with 503."""
    default_max_tokens: int = 4096
    """Answer length when a request gives none (also bounded by the context)."""
    request_timeout_s: float = 600.0
    """Wall-clock limit of one generation; it ends with finish_reason "length" when reached."""
    image_root: Path | None = None
    """Local image paths are accepted only under this directory (None: refused)."""
    remote: RemoteMedia = field(default_factory=RemoteMedia)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.batch_context < 2:
            raise ValueError(f"batch_context must be at least 2, got {self.batch_context}")
        if self.queue < 0:
            raise ValueError(f"queue must be >= 0, got {self.queue}")

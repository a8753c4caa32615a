"""`omnivision serve`: the OpenAI-compatible server (FastAPI + uvicorn, the `serve` extra).

Binds 127.0.0.1 by default. Binding any other address needs an API key, or `--insecure` to say
that running an open server on the network is intended.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from omnivision.cli.model_args import add_model_options, load_model
from omnivision.serve.settings import Limits, RemoteMedia, ServerSettings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="serve the model over an OpenAI-compatible HTTP API with a try-it page")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--api-key", help="require this key on every route but /health "
                                     "(default: $OMNIVISION_API_KEY, else none)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind without an API key")
    p.add_argument("--model-name", default="omnivision", help="the model id clients send (default omnivision)")
    p.add_argument("--allow-host", action="append", default=[],
                   help="an extra Host header name to answer while no API key is set (repeatable)")
    p.add_argument("--max-batch", "--slots", dest="max_batch", type=int, default=ServerSettings.max_batch,
                   help=f"generations that run at once, decoded together in one batch (default "
                        f"{ServerSettings.max_batch}; --slots is the old name)")
    p.add_argument("--batch-context", type=int, default=4096,
                   help="positions per sequence in the batch (default 4096); longer requests run alone")
    p.add_argument("--queue", type=int, default=64, help="requests that may wait for a place (default 64)")
    p.add_argument("--image-root", type=Path,
                   help="accept local image paths under this directory (default: refused)")
    p.add_argument("--allow-image-host", action="append", default=[],
                   help="fetch https image URLs from this host (repeatable; default: no fetching)")
    p.add_argument("--max-images", type=int, default=4, help="images per request (default 4)")
    p.add_argument("--timeout", type=float, default=600.0, help="wall-clock seconds per generation (default 600)")
    p.set_defaults(handler=run)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from(args: argparse.Namespace):
    api_key = args.api_key or os.environ.get("OMNIVISION_API_KEY") or None
    if not is_loopback(args.host) and api_key is None and not args.insecure:
        raise ValueError(f"refusing to bind {args.host} without an API key: pass --api-key (or set "
                         "OMNIVISION_API_KEY), or --insecure to serve without one")
    if args.image_root is not None and not args.image_root.is_dir():
        raise ValueError(f"--image-root {args.image_root} is not a directory")
    return ServerSettings(model_name=args.model_name, api_key=api_key, allowed_hosts=tuple(args.allow_host),
                          max_batch=args.max_batch, batch_context=args.batch_context, queue=args.queue, request_timeout_s=args.timeout,
                          image_root=args.image_root, remote=RemoteMedia(tuple(args.allow_image_host)),
                          limits=Limits(images_per_request=args.max_images))


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)  # refuse a bad setting before the model loads
    try:
        import uvicorn

        from omnivision.serve.app import create_app
    except ImportError as e:
        raise ValueError(f"the server needs the serve extra: pip install 'omnivision[serve]' ({e})") from None
    app = create_app(load_model(args), settings)
    print(f"serving {settings.model_name} on http://{args.host}:{args.port}/"
          f"{' (API key required)' if settings.api_key else ''}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", h11_max_incomplete_event_size=65536,
                timeout_keep_alive=5)
    return 0

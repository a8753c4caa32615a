"""`omnivision verify-release DIR`: run the release checklist on downloaded official files.

Exit status 0 when every check passes, 1 when one fails.
"""

from __future__ import annotations

import argparse

from omnivision.weights.release_check import check_release
from omnivision.weights.release_read import find_release


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="check downloaded official GGUF files against the known layout")
    p.add_argument("directory", help="folder with the language-model and mmproj GGUF files")
    p.add_argument("--gguf-type", help="which language-model GGUF to check when several are present")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    files = find_release(args.directory, args.gguf_type)
    print(files.note)
    checks = check_release(files)
    for c in checks:
        print(f"[{c.status:>4}] {c.name}: {c.detail}")
    failed = sum(c.status == "fail" for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks passed or informational, {failed} failed")
    return 1 if failed else 0

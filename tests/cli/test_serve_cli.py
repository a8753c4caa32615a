"""`omnivision serve`: binds loopback by default, refuses an open bind without a key, and serves
the bundled model when started as a real process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from omnivision.cli.main import main

pytest.importorskip("uvicorn")


def test_a_public_bind_needs_a_key_or_insecure(capsys, monkeypatch) -> None:
    monkeypatch.delenv("OMNIVISION_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to bind 0.0.0.0 without an API key" in capsys.readouterr().err


def test_a_missing_image_root_is_refused(capsys, tmp_path: Path) -> None:
    assert main(["serve", "--image-root", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_max_batch_and_its_old_name_slots(capsys) -> None:
    import argparse

    from omnivision.cli.serve import add_parser, settings_from

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(), "serve")
    assert settings_from(parser.parse_args(["serve", "--max-batch", "4"])).max_batch == 4
    settings = settings_from(parser.parse_args(["serve", "--slots", "3", "--batch-context", "512"]))
    assert (settings.max_batch, settings.batch_context) == (3, 512)
    assert main(["serve", "--max-batch", "0"]) == 2
    assert "max_batch must be at least 1" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on `port` (Linux /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.is_file():
            pytest.skip("needs /proc/net/tcp")
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_default_bind_is_loopback_only() -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "omnivision.cli.main", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert json.load(r)["status"] == "ok"
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    finally:
        proc.terminate()
        proc.wait(timeout=30)

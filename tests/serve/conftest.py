"""Fixtures for the server tests: the bundled nano model, an in-process client, a live server."""

from __future__ import annotations

import base64
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from omnivision.loader import BUNDLED, load  # noqa: E402
from omnivision.serve.app import create_app  # noqa: E402
from omnivision.serve.settings import ServerSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCENE = REPO / "assets" / "scene.png"


@pytest.fixture(scope="session")
def nano():
    return load(BUNDLED)


@pytest.fixture(scope="session")
def scene_url() -> str:
    return "data:image/png;base64," + base64.b64encode(SCENE.read_bytes()).decode()


@contextmanager
def client_for(vlm, settings: ServerSettings | None = None, base_url: str = "http://localhost"):
    from starlette.testclient import TestClient

    app = create_app(vlm, settings)
    with TestClient(app, base_url=base_url, raise_server_exceptions=False) as client:
        client.engine = app.app.state.engine
        yield client


@contextmanager
def live_server(vlm, settings: ServerSettings | None = None):
    """uvicorn on a free loopback port in a thread; yields the base URL and the engine."""
    import uvicorn

    app = create_app(vlm, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app.app.state.engine
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def settle(engine, deadline_s: float = 10.0) -> None:
    """Wait until no job runs or waits (up to `deadline_s`): a slot gives its place back just after
    its job's last event, so a client can hold the whole answer a moment before the engine is idle."""
    end = time.monotonic() + deadline_s
    while (engine.running or engine.waiting) and time.monotonic() < end:
        time.sleep(0.05)

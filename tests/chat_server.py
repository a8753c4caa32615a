"""A local chat-completions server for tests, whose reply to each request is scripted by the test.

`script(n, body)` gets the request number (from 1) and the JSON body, and returns
`(status, content)` or `(status, content, delay_s)` or `(status, content, delay_s, headers)`.
A str content on 200 is sent as a chat completion from model "served-model"; bytes are sent as
they are; any other status sends an OpenAI-style error body with the content as its message.

The `server` fixture is a factory for tests that start several: `server(script)` returns a started
`ChatServer`, and every one is closed after the test (import it into the test module).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import sleep  # bound now, so tests that patch time.sleep do not slow the server

import pytest


class ChatServer:
    def __init__(self, script) -> None:
        self.script, self.requests, self.lock = script, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((self.path, dict(self.headers), body))
                    n = len(outer.requests)
                reply = tuple(outer.script(n, body))
                status, content, delay, headers = reply + ((0, {})[len(reply) - 2:])
                sleep(delay)
                try:
                    self._answer(status, content, headers)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def _answer(self, status, content, headers):
                if isinstance(content, bytes):
                    payload = content
                elif status == 200:
                    payload = json.dumps({"model": "served-model", "choices": [
                        {"message": {"role": "assistant", "content": content}}]}).encode()
                else:
                    payload = json.dumps({"error": {"message": content}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def bodies(self) -> list[dict]:
        return [body for _, _, body in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers: list[ChatServer] = []

    def make(script) -> ChatServer:
        servers.append(ChatServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()

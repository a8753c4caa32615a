"""Remote image URLs: off by default; when on, https to listed hosts with public addresses only,
every redirect checked again, and no connection ever opened to a refused address."""

from __future__ import annotations

import socket
import threading

import pytest

from omnivision.serve import remote_media
from omnivision.serve.chat_request import ImageRef
from omnivision.serve.errors import APIError
from omnivision.serve.settings import RemoteMedia

REF = ImageRef("x", "messages[0].content[0].image_url.url")
ON = RemoteMedia(allowed_hosts=("images.example.com", "cdn.example.org"))


def _refused(url: str, remote: RemoteMedia = ON) -> APIError:
    with pytest.raises(APIError) as info:
        remote_media.fetch(url, REF, remote, 10_000_000)
    assert info.value.status == 400 and info.value.param == REF.param
    return info.value


@pytest.fixture
def canary():
    """A listener on loopback that counts the connections it receives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    hits = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], hits
    stop.set()
    thread.join()
    server.close()


def test_off_by_default(canary) -> None:
    port, hits = canary
    assert _refused(f"https://127.0.0.1:{port}/a.png", RemoteMedia()).code == "remote_media_disabled"
    assert hits == []


@pytest.mark.parametrize("url", ["http://images.example.com/a.png", "https://evil-images.example.com/a.png",
                                 "https://images.example.com.evil.com/a.png", "https://2130706433/a.png",
                                 "https://0x7f.1/a.png", "https://[::1]/a.png"])
def test_scheme_and_host_must_be_allowed(url) -> None:
    assert _refused(url).code in ("invalid_image_url", "remote_media_not_allowed")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "100.64.0.1", "169.254.169.254", "::1",
                                     "::ffff:127.0.0.1", "0.0.0.0", "192.168.1.1", "fd00::1", "224.0.0.1"])
def test_names_resolving_to_non_public_addresses(address, monkeypatch, canary) -> None:
    port, hits = canary
    monkeypatch.setattr(remote_media, "resolve", lambda host, p, t=None: [address])
    assert _refused(f"https://images.example.com:{port}/a.png").code == "remote_media_not_allowed"
    assert hits == []


def test_a_mixed_answer_with_one_private_address_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(remote_media, "resolve", lambda host, p, t=None: ["93.184.216.34", "127.0.0.1"])
    assert _refused("https://images.example.com/a.png").code == "remote_media_not_allowed"


def test_public_address_rules() -> None:
    assert remote_media.public_address("93.184.216.34")
    assert remote_media.public_address("2606:2800:220:1:248:1893:25c8:1946")
    assert remote_media.public_address("64:ff9b::5db8:d822")  # NAT64 of 93.184.216.34
    for a in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "100.64.1.1", "169.254.1.1", "::ffff:10.0.0.1", "fe80::1",
              "64:ff9b::a00:1", "2002:a00:1::1", "2002:7f00:1::1"):  # NAT64 and 6to4 of private addresses
        assert not remote_media.public_address(a), a


class _Response:
    def __init__(self, status: int, headers: dict, body: bytes = b"") -> None:
        self.status, self._headers, self._body = status, headers, body

    def getheader(self, name: str):
        return self._headers.get(name)

    def read1(self, n: int) -> bytes:
        out, self._body = self._body[:n], self._body[n:]
        return out


def _scripted(monkeypatch, responses: dict[str, _Response], connected: list) -> None:
    """Replace the pinned connection: each (host, path) gets its scripted answer."""

    class Fake:
        def __init__(self, host, address, port, timeout) -> None:
            self.host, self.address, self.sock = host, address, None
            connected.append((host, address))

        def request(self, method, path, headers) -> None:
            self.path = path

        def getresponse(self):
            return responses[f"{self.host}{self.path}"]

        def close(self) -> None:
            pass

    monkeypatch.setattr(remote_media, "_PinnedHTTPS", Fake)


def test_connects_to_the_checked_address_and_reads_the_image(monkeypatch) -> None:
    monkeypatch.setattr(remote_media, "resolve", lambda host, p, t=None: ["93.184.216.34"])
    connected: list = []
    _scripted(monkeypatch, {"images.example.com/a.png": _Response(200, {}, b"\x89PNG...")}, connected)
    assert remote_media.fetch("https://images.example.com/a.png", REF, ON, 100) == b"\x89PNG..."
    assert connected == [("images.example.com", "93.184.216.34")]


def test_every_redirect_is_checked_again(monkeypatch) -> None:
    addresses = {"images.example.com": ["93.184.216.34"], "cdn.example.org": ["10.0.0.5"]}
    monkeypatch.setattr(remote_media, "resolve", lambda host, p, t=None: addresses[host])
    connected: list = []
    _scripted(monkeypatch, {
        "images.example.com/a.png": _Response(302, {"Location": "https://cdn.example.org/b.png"}),
        "images.example.com/c.png": _Response(302, {"Location": "https://metadata.internal/x"}),
    }, connected)
    assert _refused("https://images.example.com/a.png").code == "remote_media_not_allowed"
    assert _refused("https://images.example.com/c.png").code == "remote_media_not_allowed"
    assert all(host == "images.example.com" for host, _ in connected)


def test_redirect_chains_are_cut(monkeypatch) -> None:
    monkeypatch.setattr(remote_media, "resolve", lambda host, p, t=None: ["93.184.216.34"])
    connected: list = []
    chain = {f"images.example.com/{i}": _Response(302, {"Location": f"/{i + 1}"}) for i in range(10)}
    _scripted(monkeypatch, chain, connected)
    assert "redirected more than 5" in _refused("https://images.example.com/0").message
    assert len(connected) == 6


@pytest.mark.parametrize("url", ["https://[::1/a.png", "https://images.example.com:99999/a.png",
                                 "https://images.example.com:abc/a.png"])
def test_malformed_urls(url) -> None:
    assert _refused(url).code == "invalid_image_url"


def test_a_trickling_server_is_cut_at_the_deadline(monkeypatch) -> None:
    """A real socket that sends one byte at a time, each well within a recv timeout: the one deadline
    still ends the fetch (plain TCP, the TLS layer swapped for the test)."""
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def trickle() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n":
                conn.send(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()

    class Plain(remote_media.http.client.HTTPConnection):
        def __init__(self, host, address, port_, timeout) -> None:
            super().__init__("127.0.0.1", port, timeout=timeout)

    monkeypatch.setattr(remote_media, "_PinnedHTTPS", Plain)
    monkeypatch.setattr(remote_media, "resolve", lambda host, p, t=None: ["93.184.216.34"])
    started = time.monotonic()
    with pytest.raises(APIError) as info:
        remote_media.fetch("https://images.example.com/a.png", REF, RemoteMedia(("images.example.com",), 0.5), 1000)
    assert info.value.code == "remote_media_timeout"
    assert time.monotonic() - started < 1.5  # the headers alone would take over 2 s
    server.close()


def test_size_cap_while_reading(monkeypatch) -> None:
    monkeypatch.setattr(remote_media, "resolve", lambda host, p, t=None: ["93.184.216.34"])
    _scripted(monkeypatch, {"images.example.com/big": _Response(200, {}, b"x" * 5000),
                            "images.example.com/said": _Response(200, {"Content-Length": "99999"}, b"x")}, [])
    with pytest.raises(APIError) as info:
        remote_media.fetch("https://images.example.com/big", REF, ON, 1000)
    assert info.value.code == "image_too_large"
    with pytest.raises(APIError) as info:
        remote_media.fetch("https://images.example.com/said", REF, ON, 1000)
    assert info.value.code == "image_too_large"

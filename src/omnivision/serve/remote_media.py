"""Fetching an image over https without letting a request reach the server's own network (SSRF).

Off unless the operator lists hosts (`--allow-image-host`). When on, each URL must be `https`, its
host one of the listed names (exact match: `allowed.com.evil.com` is not `allowed.com`), and every
address the name resolves to must be a public one: loopback, private, carrier-grade NAT,
link-local, multicast, reserved and unspecified addresses are refused, IPv4-mapped IPv6 included.
The connection goes to the address that was checked (the name is not resolved a second time, so a
rebinding resolver cannot swap it), while TLS still verifies the certificate for the host name.
Redirects are followed by hand, each hop checked again, at most `max_redirects`; the whole fetch
has one deadline (5 s by default) and reading stops at the size cap.

The standard library does this job here because the fetch has to pin the checked address under a
verified TLS session, which the common HTTP clients do not expose.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from omnivision.serve.chat_request import ImageRef
from omnivision.serve.errors import bad_request
from omnivision.serve.settings import RemoteMedia


def public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a seam for tests)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a fixed address, with SNI and certificate checks for `host`."""

    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _checked_target(url: str, ref: ImageRef, remote: RemoteMedia) -> tuple[str, int, str, str]:
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise bad_request("remote images must use https", ref.param, "invalid_image_url")
    host = (parts.hostname or "").lower().rstrip(".")
    if host not in {h.lower().rstrip(".") for h in remote.allowed_hosts}:
        raise bad_request(f"image host {host!r} is not on this server's allow list", ref.param,
                          "remote_media_not_allowed")
    port = parts.port or 443
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        raise bad_request(f"cannot resolve image host {host!r}", ref.param, "invalid_image_url") from None
    if not addresses or not all(public_address(a) for a in addresses):
        raise bad_request(f"image host {host!r} resolves to a non-public address", ref.param,
                          "remote_media_not_allowed")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, addresses[0], path


def fetch(url: str, ref: ImageRef, remote: RemoteMedia, cap: int) -> bytes:
    """The bytes at `url` under the rules above (blocking)."""
    if not remote.enabled:
        raise bad_request("fetching images from URLs is disabled on this server; send the image as a "
                          "data URL", ref.param, "remote_media_disabled")
    deadline = time.monotonic() + remote.timeout_s
    for _ in range(remote.max_redirects + 1):
        host, port, address, path = _checked_target(url, ref, remote)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn = _PinnedHTTPS(host, address, port, timeout=left)
        try:
            conn.request("GET", path, headers={"Host": host, "Accept": "image/*", "User-Agent": "omnivision"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise bad_request("the image URL redirected nowhere", ref.param, "invalid_image_url")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise bad_request(f"the image URL answered HTTP {response.status}", ref.param,
                                  "invalid_image_url")
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > cap:
                raise bad_request(f"the image is over the limit of {cap} bytes", ref.param, "image_too_large")
            chunks, total = [], 0
            while total <= cap:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = response.read(min(65536, cap + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > cap:
                raise bad_request(f"the image is over the limit of {cap} bytes", ref.param, "image_too_large")
            return b"".join(chunks)
        except (TimeoutError, socket.timeout):
            raise bad_request(f"fetching the image took over {remote.timeout_s:g} s", ref.param,
                              "remote_media_timeout") from None
        except (OSError, http.client.HTTPException) as e:
            raise bad_request(f"cannot fetch the image: {type(e).__name__}", ref.param, "invalid_image_url") from None
        finally:
            conn.close()
    raise bad_request(f"the image URL redirected more than {remote.max_redirects} times or timed out",
                      ref.param, "invalid_image_url")

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

import concurrent.futures
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from urllib.parse import urljoin, urlsplit

from omnivision.serve.chat_request import ImageRef
from omnivision.serve.errors import bad_request, shown
from omnivision.serve.settings import RemoteMedia


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):  # IPv6 forms that carry an IPv4 address
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="omnivision-resolve")


def resolve(host: str, port: int, timeout: float = 5.0) -> list[str]:
    """Every address `host` resolves to, within `timeout` (a seam for tests). getaddrinfo has no
    timeout of its own, so it runs on a small pool and is abandoned when it overruns."""
    future = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"resolving {host} took over {timeout:g} s") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a fixed address, with SNI and certificate checks for `host`."""

    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _checked_target(url: str, ref: ImageRef, remote: RemoteMedia, deadline: float) -> tuple[str, int, str, str]:
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:  # "https://[::1/", a port of "99999" or "abc"
        raise bad_request("the image URL is malformed", ref.param, "invalid_image_url") from None
    if parts.scheme != "https":
        raise bad_request("remote images must use https", ref.param, "invalid_image_url")
    host = (parts.hostname or "").lower().rstrip(".")
    if host not in {h.lower().rstrip(".") for h in remote.allowed_hosts}:
        raise bad_request(f"image host {shown(host)} is not on this server's allow list", ref.param,
                          "remote_media_not_allowed")
    try:
        addresses = resolve(host, port, max(deadline - time.monotonic(), 0.01))
    except TimeoutError:
        raise bad_request(f"resolving {shown(host)} took over {remote.timeout_s:g} s", ref.param,
                          "remote_media_timeout") from None
    except (OSError, UnicodeError):
        raise bad_request(f"cannot resolve image host {shown(host)}", ref.param, "invalid_image_url") from None
    if not addresses or not all(public_address(a) for a in addresses):
        raise bad_request(f"image host {shown(host)} resolves to a non-public address", ref.param,
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
        host, port, address, path = _checked_target(url, ref, remote, deadline)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn = _PinnedHTTPS(host, address, port, timeout=left)
        # a server trickling bytes resets each recv's timeout; this ends the whole exchange at the
        # deadline by shutting the socket under whatever read is waiting
        watchdog = threading.Timer(left, _shut, (conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("GET", path, headers={"Host": host, "Accept": "image/*", "User-Agent": "omnivision"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise bad_request("the image URL redirected nowhere", ref.param, "invalid_image_url")
                try:
                    url = urljoin(url, location)
                except ValueError:
                    raise bad_request("the image URL redirected to a malformed URL", ref.param,
                                      "invalid_image_url") from None
                continue
            if response.status != 200:
                raise bad_request(f"the image URL answered HTTP {response.status}", ref.param,
                                  "invalid_image_url")
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > cap:
                raise bad_request(f"the image is over the limit of {cap} bytes", ref.param, "image_too_large")
            chunks, total = [], 0
            while total <= cap:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if conn.sock is not None:  # each wait bounded by what is left of the one deadline
                    conn.sock.settimeout(left)
                chunk = response.read1(min(65536, cap + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > cap:
                raise bad_request(f"the image is over the limit of {cap} bytes", ref.param, "image_too_large")
            return b"".join(chunks)
        except (TimeoutError, socket.timeout):
            raise _timed_out(remote, ref) from None
        except (OSError, http.client.HTTPException) as e:
            if time.monotonic() >= deadline:
                raise _timed_out(remote, ref) from None
            raise bad_request(f"cannot fetch the image: {type(e).__name__}", ref.param, "invalid_image_url") from None
        finally:
            watchdog.cancel()
            conn.close()
    raise bad_request(f"the image URL redirected more than {remote.max_redirects} times or timed out",
                      ref.param, "invalid_image_url")


def _timed_out(remote: RemoteMedia, ref: ImageRef):
    return bad_request(f"fetching the image took over {remote.timeout_s:g} s", ref.param, "remote_media_timeout")


def _shut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

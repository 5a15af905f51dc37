"""The network side of fetch-images: the address rule, a connection backend that only connects to checked
addresses within a deadline, and one keep-alive HTTP session per worker that follows redirects itself.

Why: the URLs come from data we did not write, and the machine running this may sit next to things a URL
must not reach (a cloud metadata service at 169.254.169.254, an admin page on localhost, a database on
10.x). So every host is resolved here and refused when ANY of its addresses is not global (loopback,
private, link-local, multicast, reserved, unspecified; IPv4-mapped IPv6 unwrapped); the connection then goes
to the checked address itself (no second DNS lookup a rebinding server could answer differently; the Host
header and TLS SNI keep the name); redirects are followed here, at most MAX_REDIRECTS, each new host checked
the same way and only to http(s). `allow_private` lifts the private/loopback rule for an internal image CDN;
link-local, multicast, reserved and unspecified addresses stay refused. Proxy variables are ignored (a proxy
would resolve names where we cannot check them). Every socket read and write is capped by the attempt's
total deadline, so a server dripping one byte at a time cannot hold a worker.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any

from effiminivlm.data.images.store import is_url

USER_AGENT = "effiminivlm-fetch/0.2 (one-time research image cache)"
MAX_REDIRECTS = 5


class FetchError(Exception):
    """One failed attempt: `reason` is the manifest's error, `retryable` whether a retry may help."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after


def address_refusal(ip: str, allow_private: bool = False) -> str | None:
    """The refusal ("private_address" or "blocked_address") of a connection to `ip`; None when allowed."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return "bad_address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:  # before is_reserved: ::1 lies in the reserved ::/8
        return None if allow_private else "private_address"
    if addr.is_link_local or addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        return "blocked_address"  # never an image CDN, even an internal one (cloud metadata lives here)
    if not allow_private and (addr.is_private or not addr.is_global):
        return "private_address"
    return None


def checked_addresses(host: str, port: int, allow_private: bool = False) -> list[str]:
    """Every address `host` resolves to, after checking them all; FetchError when one is refused."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        raise FetchError("dns_error", True) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise FetchError("dns_error", True)
    for ip in addresses:
        refusal = address_refusal(ip, allow_private)
        if refusal is not None:
            raise FetchError(refusal, False)
    return addresses


class _Clock:
    """The current attempt's deadline (monotonic seconds); one per worker session, so per thread."""

    def __init__(self) -> None:
        self.deadline = float("inf")

    def cap(self, timeout: float | None) -> float:
        """`timeout` shortened to what is left of the deadline; a timeout error once it has passed."""
        import httpcore2

        left = self.deadline - time.monotonic()
        if left <= 0:
            raise httpcore2.ReadTimeout("total deadline reached")
        return left if timeout is None else min(timeout, left)


def _guarded_backend(clock: _Clock, allow_private: bool) -> Any:
    """An httpcore network backend that connects only to checked addresses and keeps every socket
    operation inside the clock's deadline."""
    import httpcore2

    class Stream(httpcore2.NetworkStream):
        def __init__(self, inner: httpcore2.NetworkStream) -> None:
            self.inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, clock.cap(timeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.inner.write(buffer, clock.cap(timeout))

        def close(self) -> None:
            self.inner.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                      timeout: float | None = None) -> httpcore2.NetworkStream:
            return Stream(self.inner.start_tls(ssl_context, server_hostname, clock.cap(timeout)))

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    class Backend(httpcore2.NetworkBackend):
        inner = httpcore2.SyncBackend()

        def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                        local_address: str | None = None, socket_options: Any = None) -> Stream:
            error: Exception | None = None
            for ip in checked_addresses(host, port, allow_private):  # connect to what was checked
                try:
                    return Stream(self.inner.connect_tcp(ip, port, clock.cap(timeout), local_address,
                                                         socket_options))
                except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as e:
                    error = e
            assert error is not None
            raise error

        def connect_unix_socket(self, path: str, timeout: float | None = None,
                                socket_options: Any = None) -> Stream:
            raise FetchError("blocked_address", False)

        def sleep(self, seconds: float) -> None:
            time.sleep(seconds)

    return Backend()


class Session:
    """One worker's keep-alive HTTP client: pooled connections through the guarded backend."""

    def __init__(self, timeout: float, allow_private: bool, ssl_context: Any) -> None:
        import httpcore2
        import httpx2

        self.clock = _Clock()

        class Transport(httpx2.HTTPTransport):
            def __init__(self, backend: Any) -> None:
                super().__init__(verify=ssl_context, trust_env=False)
                self._pool.close()  # replaced by the same pool, but with the guarded backend
                self._pool = httpcore2.ConnectionPool(
                    ssl_context=ssl_context, max_connections=4, max_keepalive_connections=4,
                    keepalive_expiry=30.0, network_backend=backend)

        self.client = httpx2.Client(
            transport=Transport(_guarded_backend(self.clock, allow_private)), trust_env=False,
            follow_redirects=False, timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})

    def get(self, url: str, deadline: float, max_bytes: int) -> bytes:
        """The body of `url` (redirects followed here, each hop re-checked) within `deadline` seconds."""
        import httpx2

        self.clock.deadline = time.monotonic() + deadline
        try:
            for _ in range(MAX_REDIRECTS + 1):
                with self.client.stream("GET", url) as resp:
                    if resp.is_redirect:
                        target = resp.headers.get("location", "")
                        try:
                            url = str(resp.url.join(target))
                        except (httpx2.InvalidURL, ValueError):
                            raise FetchError("bad_redirect", False) from None
                        if not is_url(url):
                            raise FetchError("redirect_scheme", False)  # file://, ftp://, data:
                        continue
                    if resp.status_code >= 400:
                        retry_after = resp.headers.get("retry-after", "").strip()
                        delay = float(retry_after) if retry_after.isdigit() else None
                        code = resp.status_code
                        raise FetchError(f"http_{code}", code >= 500 or code in (408, 429), delay)
                    chunks, size = [], 0
                    for chunk in resp.iter_bytes():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > max_bytes:
                            raise FetchError("too_large", False)
                    return b"".join(chunks)
            raise FetchError("too_many_redirects", False)
        except httpx2.TimeoutException:
            raise FetchError("timeout", True) from None
        except (httpx2.InvalidURL, httpx2.UnsupportedProtocol, UnicodeError, ValueError):
            raise FetchError("invalid_url", False) from None
        except (httpx2.TransportError, OSError):  # resets, TLS errors, truncated bodies
            raise FetchError("connection", True) from None
        finally:
            self.clock.deadline = float("inf")

    def close(self) -> None:
        self.client.close()

"""What the server allows, in one place: sizes, times, queue and connection bounds, the Host names it
answers. Every value is range-checked when the limits are made, so `mixerlab serve --port 99999` or a
negative timeout is one message naming the option, not a server that binds elsewhere or refuses all."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from ..data.decode import MAX_PIXELS
from ..errors import ConfigError

MB = 1 << 20
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Limits:
    """The server's bounds; the CLI flag of each is the field name with dashes (`--max-body-mb`)."""

    max_body_mb: float = 10  # request body (413 beyond)
    max_pixels: int = MAX_PIXELS  # decoded image size (413 beyond)
    timeout_s: float = 30  # one request from its body's end to its answer: decode, queue, model (504)
    max_queue: int = 256  # images being decoded or waiting for the model (503 beyond)
    max_batch: int = 32  # images per model call
    max_wait_ms: float = 5  # how long a batch waits for more images
    max_files: int = 64  # files in one /v1/predict/batch request (422 beyond)
    decode_workers: int = 0  # threads decoding images off the event loop; 0: min(4, cores)
    read_timeout_s: float = 30  # the whole body must arrive within this (408)
    header_timeout_s: float = 10  # a connection's request headers must arrive within this (closed)
    keep_alive_s: float = 5  # an idle keep-alive connection is closed after this
    max_header_kb: int = 64  # the request line and headers together (400 beyond)
    max_headers: int = 100  # header lines per request (431 beyond)
    max_connections: int = 64  # open connections at once (503 and closed beyond)
    allowed_hosts: tuple[str, ...] = ("*",)  # Host header names answered ("*": any)

    def __post_init__(self) -> None:
        positive = ("max_body_mb", "timeout_s", "read_timeout_s", "header_timeout_s", "keep_alive_s")
        at_least_one = ("max_pixels", "max_queue", "max_batch", "max_files", "max_header_kb", "max_headers",
                        "max_connections")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not v > 0 or v != v or v == float("inf"):
                raise ConfigError(f"serve option --{name.replace('_', '-')}: {v!r} is not allowed; it must be a "
                                  f"finite number above 0")
        for name in at_least_one + ("decode_workers",):
            v = getattr(self, name)
            lo = 0 if name == "decode_workers" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"serve option --{name.replace('_', '-')}: {v!r} is not allowed; it must be an "
                                  f"integer of at least {lo}")
        if not isinstance(self.max_wait_ms, int | float) or not 0 <= self.max_wait_ms <= 10_000:
            raise ConfigError(f"serve option --max-wait-ms: {self.max_wait_ms!r} is not allowed; it must be in "
                              f"[0, 10000]")
        if self.max_batch > self.max_queue:
            raise ConfigError(f"serve option --max-batch: {self.max_batch} is over --max-queue {self.max_queue}; "
                              f"a batch is taken from the queue")
        self.allowed_hosts = tuple(h.strip().lower().strip("[]") for h in self.allowed_hosts if h.strip())
        if not self.allowed_hosts:
            raise ConfigError("serve option --allowed-hosts: no host given; use '*' to answer any Host header")
        if not self.decode_workers:
            self.decode_workers = min(4, _cores())

    @property
    def max_body(self) -> int:
        return int(self.max_body_mb * MB)

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request's Host header (name[:port]) names this server."""
        if "*" in self.allowed_hosts:
            return True
        if not host_header:
            return False
        h = host_header.strip().lower()
        name = h[1:].split("]", 1)[0] if h.startswith("[") else h.rsplit(":", 1)[0] if h.count(":") == 1 else h
        return name in self.allowed_hosts


def check_port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError(f"serve option --port: {port!r} is not allowed; it must be in [1, 65535]")
    return port


def default_hosts(bind: str) -> tuple[str, ...]:
    """On a loopback bind, only the loopback names: a web page whose DNS name is rebound to 127.0.0.1
    sends its own name as Host and is refused. Elsewhere any (put the public names in --allowed-hosts)."""
    try:
        loop = ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        loop = bind.lower() == "localhost"
    return LOOPBACK_NAMES if loop else ("*",)

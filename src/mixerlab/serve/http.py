"""The connection layer under the app: uvicorn on its h11 protocol, with the bounds a port open to
careless or hostile clients needs and that uvicorn's defaults leave out.

httptools (what `uvicorn[standard]` picks) has no limit on a header's size, so a 200 MB header line
is read whole; h11 refuses past `max_incomplete_event_size`. uvicorn closes an idle keep-alive
connection, but not one that sends half its headers and waits: a per-connection header deadline
closes those. Beyond `max_connections` a new connection gets one JSON 503 and is closed, before it
can hold a body open. Every refusal at this layer is JSON like the app's own."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import Limits

log = logging.getLogger("mixerlab.serve")

REASONS = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}


def raw_json_response(status: int, detail: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {REASONS[status]}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Throttle:
    """One log line per kind of refusal per second at most: a flood must not become a log flood."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.skipped: dict[str, int] = {}

    def warn(self, kind: str, msg: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -1e9) >= 1.0:
            extra = self.skipped.pop(kind, 0)
            log.warning("%s%s", msg, f" (and {extra} more since the last such line)" if extra else "")
            self.last[kind] = now
        else:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1


def protocol_class(limits: Limits, on_refused=None) -> type[H11Protocol]:
    """An H11Protocol subclass enforcing the connection-level `limits`; `on_refused(reason)` counts."""
    throttle = _Throttle()
    count = on_refused or (lambda reason: None)

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self._refused = True
                self._refuse("too many connections", f"refused a connection: {limits.max_connections} are open "
                             f"(--max-connections)", 503,
                             f"the server holds {limits.max_connections} connections already; retry shortly", 1)
                return
            self._arm()

        def _refuse(self, reason: str, log_line: str, status: int, detail: str, retry_after=None) -> None:
            """Count, log (throttled), answer in JSON and close: every refusal at this layer."""
            count(reason)
            throttle.warn(reason, log_line)
            self.transport.write(raw_json_response(status, detail, retry_after))
            self.transport.close()

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(limits.header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                late = f"the request headers did not arrive within {limits.header_timeout_s:g} s"
                self._refuse("headers too slow", f"closed a connection: {late}", 408, late)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            if self._waiting_for_headers():
                self._arm()  # partial headers, or the next request of a keep-alive connection
            else:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            bad = f"malformed HTTP request, or its request line and headers are over {limits.max_header_kb} KiB"
            self._refuse("bad http", f"refused a {bad}", 400, bad)

    return GuardedH11Protocol


def config(app, host: str, port: int, limits: Limits, log_level: str = "info"):
    """uvicorn's Config for `app` under `limits`; refusals at this layer count in the app's metrics."""
    import uvicorn

    server = getattr(getattr(app, "state", None), "server", None)

    def on_refused(reason: str) -> None:
        if server is not None:
            server.metrics.rejected.labels(reason=reason).inc()

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol_class(limits, on_refused),
                          h11_max_incomplete_event_size=limits.max_header_kb * 1024,
                          timeout_keep_alive=limits.keep_alive_s, timeout_graceful_shutdown=int(limits.timeout_s))


def run(app, host: str, port: int, limits: Limits) -> None:
    """Serve `app` with uvicorn until SIGINT/SIGTERM (then it drains, see cli/serve.py)."""
    import uvicorn

    uvicorn.Server(config(app, host, port, limits)).run()

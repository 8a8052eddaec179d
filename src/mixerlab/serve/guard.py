"""The ASGI layer around every request: the Host allow-list, the header-count bound, JSON for every
error (an unexpected exception included), and one metrics sample per response, whatever ended it.

It is plain ASGI rather than FastAPI's `@app.middleware("http")`: that wrapper sees neither a response
that failed with an exception (it is gone by then) nor a client that disconnected mid-body, and lets
the latter reach uvicorn as a full traceback. Here a disconnect is one log line and a sample with
status 499 (nginx's "client closed request")."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from starlette.requests import ClientDisconnect

from .limits import Limits

log = logging.getLogger("mixerlab.serve")

CLIENT_CLOSED = 499


async def send_json(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Wraps the app; `observe(path, status, seconds)` records each response."""

    def __init__(self, app, limits: Limits, observe: Callable[[str, int, float], None]):
        self.app, self.limits, self.observe = app, limits, observe

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t = time.perf_counter()
        state = {"status": None}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal:
                await send_json(sending, *refusal)
            else:
                await self.app(scope, receive, sending)
        except ClientDisconnect:
            state["status"] = state["status"] or CLIENT_CLOSED
            log.info("%s %s: the client disconnected before the request was read", scope["method"], scope["path"])
        except Exception as e:  # a bug or a failure below: the client gets JSON, the log the traceback
            log.exception("%s %s failed", scope["method"], scope["path"])
            if state["status"] is None:
                await send_json(sending, 500, f"internal error ({type(e).__name__}); the server log has the details")
            else:
                state["status"] = 500
        finally:
            self.observe(scope["path"], state["status"] or CLIENT_CLOSED, time.perf_counter() - t)

    def _refusal(self, scope) -> tuple[int, str] | None:
        headers = scope.get("headers") or []
        if len(headers) > self.limits.max_headers:
            return 431, f"{len(headers)} header lines; at most {self.limits.max_headers} are allowed"
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), None)
        if not self.limits.host_allowed(host):
            return 400, (f"Host {host!r} is not one this server answers ({', '.join(self.limits.allowed_hosts)}); "
                         f"start it with --allowed-hosts NAME to add one")
        return None

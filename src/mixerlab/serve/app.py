"""The HTTP inference server: an ASGI app (FastAPI), importable to mount in another service.

    app = mixerlab.serve.create_app("runs/demo")            # or an exported .onnx file
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: POST /v1/predict (an image as the raw body or as multipart field `file`; ?topk=5),
POST /v1/predict/batch (several multipart `files`), GET /healthz, /readyz, /v1/model, /metrics
(Prometheus), and GET / (a page to try it in a browser). Images go through the same decoder and
preprocessing as `mixerlab predict` and are grouped into batches (batcher.py). Every refusal is JSON
`{"detail": ...}` with its status: 413 for a body or an image that is too large, 415 for what is not
an image, 422 for bad parameters, 503 (with Retry-After) when the queue is full, 504 on a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..data.decode import MAX_PIXELS, DecodeError
from ..data.transforms import image_for_model
from ..predict import class_names_of, probabilities, top_classes
from .batcher import Batcher, QueueFull
from .metrics import ServerMetrics
from .page import PAGE

MB = 1 << 20


class Limits:
    def __init__(self, max_body_mb: float = 10, max_pixels: int = MAX_PIXELS, timeout_s: float = 30,
                 max_queue: int = 256, max_batch: int = 32, max_wait_ms: float = 5, max_files: int = 64):
        self.max_body = int(max_body_mb * MB)
        self.max_pixels, self.timeout_s, self.max_queue = max_pixels, timeout_s, max_queue
        self.max_batch, self.max_wait_ms, self.max_files = max_batch, max_wait_ms, max_files


def load_model(src: str | Path | nn.Module, backend: str = "torch") -> nn.Module:
    """A model object, a checkpoint (torch backend) or an exported file (onnx backend, or any .onnx)."""
    if isinstance(src, nn.Module):
        return src.eval()
    from ..export.runtime import is_exported, load_exported

    if backend == "onnx" or is_exported(src):
        if not is_exported(src):
            raise ValueError(f"--backend onnx serves an exported .onnx file; export it first: "
                             f"mixerlab export {src} model.onnx")
        return load_exported(src)
    from ..weights.load import from_pretrained

    return from_pretrained(src).eval()


class Server:
    """The model, its batcher and its metrics; one per app."""

    def __init__(self, model: nn.Module, limits: Limits, name: str):
        self.model, self.limits, self.name = model, limits, name
        self.class_names = class_names_of(model)
        self.metrics = ServerMetrics()
        self.batcher: Batcher | None = None
        self.ready = self.stopping = False
        self._starting: asyncio.Lock | None = None

    def run(self, images: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model, images)

    async def start(self) -> None:
        """Start the batcher and warm the model up; once, however many callers (the app's startup, or
        the first request where a host does not run the startup)."""
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self.batcher is None and not self.stopping:
                await self._start()

    async def _start(self) -> None:
        lim = self.limits
        self.batcher = Batcher(self.run, lim.max_batch, lim.max_wait_ms, lim.max_queue, self.metrics.observe_batch)
        self.batcher.start()
        cfg = self.model.config
        warm = torch.zeros(cfg.in_chans, *cfg.img_size, dtype=torch.uint8)
        await asyncio.gather(*(self.batcher.submit(warm) for _ in range(min(lim.max_batch, 4))))
        self.ready = True

    async def stop(self) -> None:
        self.ready, self.stopping = False, True
        if self.batcher is not None:
            await self.batcher.drain()

    def decode(self, data: bytes, name: str) -> torch.Tensor:
        try:
            return image_for_model(data, self.model.config, self.limits.max_pixels)
        except DecodeError as e:
            self.metrics.rejected.labels(reason=e.reason).inc()
            status = 413 if e.reason == "too large" else 415
            raise HTTPException(status, f"{name}: {e.explanation}") from None

    async def classify(self, image: torch.Tensor, topk: int) -> dict[str, Any]:
        if not self.ready:
            await self.start()
        if not self.ready:
            raise HTTPException(503, "the server is shutting down", headers={"Retry-After": "1"})
        try:
            res = await asyncio.wait_for(self.batcher.submit(image), self.limits.timeout_s)
        except QueueFull:
            self.metrics.rejected.labels(reason="queue full").inc()
            raise HTTPException(503, f"the queue is full ({self.limits.max_queue} images); retry shortly",
                                headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            self.metrics.rejected.labels(reason="timeout").inc()
            raise HTTPException(504, f"no answer within {self.limits.timeout_s:g} s") from None
        return {"top": top_classes(res.probs, topk, self.class_names), "batch_size": res.batch_size}


async def read_body(request: Request, server: Server) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (by its header or while reading)."""
    limit = server.limits.max_body
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        server.metrics.rejected.labels(reason="body too large").inc()
        raise HTTPException(413, f"the body is {int(declared):,} bytes, over the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            server.metrics.rejected.labels(reason="body too large").inc()
            raise HTTPException(413, f"the body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def images_of(request: Request, body: bytes, field: str, max_files: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: multipart fields named `field`, or the raw body as one image."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        if not body:
            raise HTTPException(422, "no image: send it as the body or as multipart field 'file'")
        return [("body", body)]
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=max_files).parse()
    except MultiPartException as e:
        raise HTTPException(422, f"bad multipart body: {e.message}") from None
    files = [(getattr(f, "filename", None) or field, await f.read()) for f in form.getlist(field) if hasattr(f, "read")]
    if not files:
        raise HTTPException(422, f"no multipart field {field!r} holding a file")
    return files


def create_app(src: str | Path | nn.Module, backend: str = "torch", limits: Limits | None = None) -> FastAPI:
    """The ASGI app serving `src` (a checkpoint, an exported file or a model object)."""
    limits = limits or Limits()
    model = load_model(src, backend)
    server = Server(model, limits, str(src) if not isinstance(src, nn.Module) else type(src).__name__)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.start()
        yield
        await server.stop()

    app = FastAPI(title="mixerlab", lifespan=lifespan)
    app.state.server = server

    @app.middleware("http")
    async def count(request: Request, call_next):
        t = time.perf_counter()
        response = await call_next(request)
        server.metrics.observe_request(request.url.path, response.status_code, time.perf_counter() - t,
                                       server.batcher.depth if server.batcher else 0)
        return response

    @app.post("/v1/predict")
    async def predict(request: Request, topk: int = Query(5, ge=1)) -> dict[str, Any]:
        """topk above the number of classes gives them all, as `mixerlab predict` does."""
        t = time.perf_counter()
        (name, data), = (await images_of(request, await read_body(request, server), "file", 1))[:1]
        out = await server.classify(server.decode(data, name), topk)
        return {**out, "model": server.name, "time_ms": round(1000 * (time.perf_counter() - t), 2)}

    @app.post("/v1/predict/batch")
    async def predict_batch(request: Request, topk: int = Query(5, ge=1)) -> dict[str, Any]:
        t = time.perf_counter()
        files = await images_of(request, await read_body(request, server), "files", limits.max_files)
        images = [server.decode(data, name) for name, data in files]  # all decoded before any is queued
        outs = await asyncio.gather(*(server.classify(x, topk) for x in images))
        return {"results": [{"file": n, **o} for (n, _), o in zip(files, outs)], "model": server.name,
                "time_ms": round(1000 * (time.perf_counter() - t), 2)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if not server.ready:
            await server.start()
        if not server.ready:
            return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        cfg = model.config
        return {"name": server.name, "config": cfg.to_dict(), "classes": server.class_names,
                "preprocess": cfg.preprocess(),
                "backend": getattr(model, "backend", "torch"),
                "limits": {"max_body_bytes": limits.max_body, "max_pixels": limits.max_pixels,
                           "max_batch": limits.max_batch, "max_wait_ms": limits.max_wait_ms}}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    return app

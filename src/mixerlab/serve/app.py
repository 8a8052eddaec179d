"""The HTTP inference server: an ASGI app (FastAPI), importable to mount in another service.

    app = mixerlab.serve.create_app("runs/demo")            # or an exported .onnx file
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: POST /v1/predict (an image as the raw body or as multipart field `file`; ?topk=5),
POST /v1/predict/batch (several multipart `files`, answered file by file), GET /healthz, /readyz,
/v1/model, /metrics (Prometheus), and GET / (a page to try it in a browser). Images are decoded on a
bounded thread pool, never on the event loop, go through the same decoder and preprocessing as
`mixerlab predict` and are grouped into batches (batcher.py). Every refusal is JSON
`{"detail": ...}` with its status: 400 for a Host the server does not answer, 408 for a body that
does not arrive in time, 413 for a body or an image that is too large, 415 for what is not an image,
422 for bad parameters, 431 for too many headers, 500 when the model fails on an image, 503 (with
Retry-After) when the queue is full, 504 when the answer takes longer than `timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from ..data.decode import DecodeError
from ..data.transforms import image_for_model
from ..predict import class_names_of, probabilities, top_classes
from .batcher import Batcher, ModelFailure, QueueFull
from .guard import Guard
from .limits import Limits
from .metrics import ServerMetrics
from .page import PAGE


def load_model(src: str | Path | nn.Module, backend: str = "torch", trust_compiled: bool = False) -> nn.Module:
    """A model object, a checkpoint (torch backend) or an exported file (onnx backend, or any .onnx;
    a .pt2 only with `trust_compiled`, since loading it runs its native code)."""
    if isinstance(src, nn.Module):
        return src.eval()
    from ..export.runtime import is_exported, load_exported

    if backend == "onnx" or is_exported(src):
        if not is_exported(src):
            raise ValueError(f"--backend onnx serves an exported .onnx file; export it first: "
                             f"mixerlab export {src} model.onnx")
        return load_exported(src, trust_compiled=trust_compiled)
    from ..weights.load import from_pretrained

    return from_pretrained(src).eval()


def model_name(src: str | Path | nn.Module) -> str:
    """What clients are told the model is: the file or folder's own name, never the server's path."""
    if isinstance(src, nn.Module):
        return type(src).__name__
    return Path(src).resolve().name or str(src)


def blank_png(cfg) -> bytes:
    """A black PNG of the model's input size and colour, to warm the decoding path with."""
    buf = io.BytesIO()
    Image.new("L" if cfg.in_chans == 1 else "RGB", (cfg.img_size[1], cfg.img_size[0])).save(buf, "PNG")
    return buf.getvalue()


class Server:
    """The model, its batcher, its decoding pool and its metrics; one per app."""

    def __init__(self, model: nn.Module, limits: Limits, name: str):
        self.model, self.limits, self.name = model, limits, name
        self.class_names = class_names_of(model)
        self.metrics = ServerMetrics()
        self.batcher: Batcher | None = None
        self.decoder: ThreadPoolExecutor | None = None  # made at start: Ray pickles the app before that
        self.decoding = 0  # images admitted to the pool whose decoding has not finished
        self.ready = self.stopping = False
        self._starting: asyncio.Lock | None = None
        self._starting_loop: asyncio.AbstractEventLoop | None = None

    def run(self, images: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model, images)

    async def start(self) -> None:
        """Start the batcher and warm the model up; once, however many callers (the app's startup, or
        the first request where a host does not run the startup)."""
        loop = asyncio.get_running_loop()
        if self._starting_loop is not loop:  # a lock belongs to the loop it was first used on
            self._starting, self._starting_loop = asyncio.Lock(), loop
        async with self._starting:
            if self.batcher is not None and self.batcher.loop is not loop and not self.stopping:
                self._retire()
            if self.batcher is None and not self.stopping:
                await self._start()

    def _retire(self) -> None:
        """Drop a batcher whose event loop has ended: a host that runs the app again on a new loop (a
        second asyncio.run, a second test client) would otherwise queue images nobody takes."""
        self.ready, self.decoding = False, 0  # what the old loop was decoding will never be answered
        self.batcher.executor.shutdown(wait=False, cancel_futures=True)
        self.batcher = None
        if self.decoder is not None:
            self.decoder.shutdown(wait=False, cancel_futures=True)

    async def _start(self) -> None:
        lim = self.limits
        self.decoder = ThreadPoolExecutor(lim.decode_workers, thread_name_prefix="mixerlab-decode")
        self.batcher = Batcher(self.run, lim.max_batch, lim.max_wait_ms, lim.max_queue, self.metrics.observe_batch)
        self.batcher.start()
        cfg = self.model.config
        warm = torch.zeros(cfg.in_chans, *cfg.img_size, dtype=torch.uint8)
        if cfg.in_chans in (1, 3):  # the decoding path too: its first call imports torchvision (seconds)
            loop = asyncio.get_running_loop()
            warm = await loop.run_in_executor(self.decoder, self._decode_now, blank_png(cfg))
        await asyncio.gather(*(self.batcher.submit(warm) for _ in range(min(lim.max_batch, 4))))
        self.ready = True

    async def stop(self) -> None:
        self.ready, self.stopping = False, True
        if self.batcher is not None:
            await self.batcher.drain()
        if self.decoder is not None:
            self.decoder.shutdown(wait=False, cancel_futures=True)

    async def admit(self, n: int) -> None:
        """Room for n more images (being decoded or queued), or 503: the queue bound covers both. Where
        a host runs no startup (some test clients, a mounted sub-app), the first request starts it."""
        if not self.ready or self.batcher.loop is not asyncio.get_running_loop():
            await self.start()
        if not self.ready:
            raise HTTPException(503, "the server is shutting down", headers={"Retry-After": "1"})
        held = self.decoding + (self.batcher.depth if self.batcher else 0)
        if held + n > self.limits.max_queue:
            self.metrics.rejected.labels(reason="queue full").inc()
            raise HTTPException(503, f"the queue is full ({self.limits.max_queue} images); retry shortly",
                                headers={"Retry-After": "1"})

    def _decode_now(self, data: bytes) -> torch.Tensor:
        return image_for_model(data, self.model.config, self.limits.max_pixels)

    async def decode(self, data: bytes, name: str) -> torch.Tensor:
        """Decode on the pool. The image counts against the queue until its thread is done, also when
        the request gave up on it (a thread cannot be stopped halfway through a PNG)."""
        loop = asyncio.get_running_loop()
        self.decoding += 1
        job = self.decoder.submit(self._decode_now, data)
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._decoded))
        try:
            return await asyncio.wrap_future(job)
        except DecodeError as e:
            self.metrics.rejected.labels(reason=e.reason).inc()
            status = 413 if e.reason == "too large" else 415
            raise HTTPException(status, f"{name}: {e.explanation}") from None

    def _decoded(self) -> None:
        self.decoding -= 1

    async def _answer(self, data: bytes, name: str, topk: int) -> dict[str, Any]:
        image = await self.decode(data, name)
        try:
            res = await self.batcher.submit(image)
        except QueueFull:
            self.metrics.rejected.labels(reason="queue full").inc()
            raise HTTPException(503, f"the queue is full ({self.limits.max_queue} images); retry shortly",
                                headers={"Retry-After": "1"}) from None
        except ModelFailure as e:
            self.metrics.rejected.labels(reason="model failed").inc()
            raise HTTPException(500, f"{name}: the model failed on this image ({e})") from None
        return {"top": top_classes(res.probs, topk, self.class_names), "batch_size": res.batch_size}

    async def answer(self, data: bytes, name: str, topk: int) -> dict[str, Any]:
        """Decode, queue and classify one image, all within `timeout_s`."""
        try:
            return await asyncio.wait_for(self._answer(data, name, topk), self.limits.timeout_s)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            self.metrics.rejected.labels(reason="timeout").inc()
            raise HTTPException(504, f"{name}: no answer within {self.limits.timeout_s:g} s") from None


async def read_body(request: Request, server: Server) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (by its header or while reading), and
    with 408 when it has not all arrived within `read_timeout_s`."""
    limit = server.limits.max_body
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        server.metrics.rejected.labels(reason="body too large").inc()
        raise HTTPException(413, f"the body is {int(declared):,} bytes, over the limit of {limit:,} bytes")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                server.metrics.rejected.labels(reason="body too large").inc()
                raise HTTPException(413, f"the body is over the limit of {limit:,} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), server.limits.read_timeout_s)
    except asyncio.TimeoutError:
        server.metrics.rejected.labels(reason="body too slow").inc()
        raise HTTPException(408, f"the body did not arrive within {server.limits.read_timeout_s:g} s "
                                 f"({size:,} bytes came)", headers={"Connection": "close"}) from None
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


def create_app(src: str | Path | nn.Module, backend: str = "torch", limits: Limits | None = None,
               trust_compiled: bool = False) -> FastAPI:
    """The ASGI app serving `src` (a checkpoint, an exported file or a model object), with the Host
    check, JSON errors and per-response metrics of guard.py around every route."""
    limits = limits or Limits()
    model = load_model(src, backend, trust_compiled)
    server = Server(model, limits, model_name(src))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.start()
        yield
        await server.stop()

    # No /docs: its Swagger page loads scripts from a CDN, so it is blank offline; /openapi.json stays.
    app = FastAPI(title="mixerlab", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    @app.post("/v1/predict")
    async def predict(request: Request, topk: int = Query(5, ge=1)) -> dict[str, Any]:
        """topk above the number of classes gives them all, as `mixerlab predict` does."""
        t = time.perf_counter()
        (name, data), = (await images_of(request, await read_body(request, server), "file", 1))[:1]
        await server.admit(1)
        out = await server.answer(data, name, topk)
        return {**out, "model": server.name, "time_ms": round(1000 * (time.perf_counter() - t), 2)}

    @app.post("/v1/predict/batch")
    async def predict_batch(request: Request, topk: int = Query(5, ge=1)) -> dict[str, Any]:
        """Each file answered on its own: a bad file gets its `error` and `status`, the rest are classified."""
        t = time.perf_counter()
        files = await images_of(request, await read_body(request, server), "files", limits.max_files)
        await server.admit(len(files))

        async def one(name: str, data: bytes) -> dict[str, Any]:
            try:
                return {"file": name, **(await server.answer(data, name, topk))}
            except HTTPException as e:
                return {"file": name, "error": e.detail, "status": e.status_code}

        results = await asyncio.gather(*(one(n, d) for n, d in files))
        return {"results": results, "ok": sum("error" not in r for r in results),
                "failed": sum("error" in r for r in results), "model": server.name,
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
                           "max_batch": limits.max_batch, "max_wait_ms": limits.max_wait_ms,
                           "max_files": limits.max_files, "timeout_s": limits.timeout_s}}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    def observe(path: str, status: int, seconds: float) -> None:
        server.metrics.observe_request(path, status, seconds, server.batcher.depth if server.batcher else 0)

    app.add_middleware(Guard, limits=limits, observe=observe)
    return app


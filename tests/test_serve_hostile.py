"""The server against careless and hostile clients, on a real uvicorn (the h11 protocol with the limits
of serve/http.py) listening on a free loopback port. Every request loop is bounded in count and time."""

import asyncio
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import mixerlab

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from mixerlab.serve import Limits, create_app  # noqa: E402
from mixerlab.serve.http import config  # noqa: E402

from .test_serve import CLASSES, free_port, png  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = mixerlab.create_model("mixer_pico", num_classes=3, in_chans=3, img_size=16)
    torch.nn.init.normal_(m.head.weight, std=0.5)
    m.class_names = CLASSES
    return m.eval()


class Running:
    """`create_app(model, limits)` on uvicorn in a thread of this process, as `mixerlab serve` runs it."""

    def __init__(self, app, limits: Limits):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(config(app, "127.0.0.1", self.port, limits, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def serve(model):
    started = []

    def start(m=None, **limits):
        r = Running(create_app(m or model, limits=Limits(**limits)), Limits(**limits))
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


def huge_png(side=8000) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def test_big_images_decode_off_the_event_loop(serve):
    """A batch of 8000x8000 PNGs (tiny files, 64 M pixels each) used to freeze every other request."""
    srv = serve(decode_workers=1)
    big = huge_png()
    order = []

    async def go():
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as c:
            async def batch():
                r = await c.post("/v1/predict/batch", files=[("files", (f"{i}.png", big, "image/png"))
                                                              for i in range(6)])
                order.append("batch")
                return r

            async def health():
                await asyncio.sleep(0.3)  # the batch is being decoded by now
                r = await c.get("/healthz")
                order.append("health")
                return r

            return await asyncio.gather(batch(), health())

    batch, health = asyncio.run(go())
    assert health.status_code == 200 and batch.status_code == 200
    assert order == ["health", "batch"]  # answered while the images were still being decoded
    assert batch.json()["ok"] == 6


def test_decoding_is_bounded_by_the_timeout_and_counted_against_the_queue(serve):
    srv = serve(decode_workers=1, timeout_s=0.3, max_queue=3, max_batch=1)
    big = huge_png()
    r = httpx.post(f"{srv.url}/v1/predict", content=big, timeout=60)
    assert r.status_code == 504 and "no answer within 0.3 s" in r.json()["detail"]
    r = httpx.post(f"{srv.url}/v1/predict/batch", files=[("files", (f"{i}.png", big, "image/png")) for i in range(4)],
                   timeout=60)
    assert r.status_code == 503 and "queue is full (3 images)" in r.json()["detail"]
    assert r.headers["retry-after"] == "1"
    assert 'reason="timeout"' in srv.metrics()


def test_a_header_line_past_the_limit_is_refused_without_reading_it_all(serve):
    srv = serve(max_header_kb=16)
    s = connect(srv.port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000)
    reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 400") and b"over 16 KiB" in reply
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"application/json" in head and json.loads(body)["detail"]


def test_too_many_headers_get_431(serve):
    srv = serve(max_headers=20)
    r = httpx.get(f"{srv.url}/healthz", headers={f"x-{i}": "1" for i in range(30)})
    assert r.status_code == 431 and "at most 20" in r.json()["detail"]


def test_half_sent_headers_and_slow_bodies_are_cut_off(serve):
    srv = serve(header_timeout_s=0.5, read_timeout_s=0.5)
    s = connect(srv.port)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    t = time.monotonic()
    reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 408") and b"headers did not arrive within 0.5 s" in reply
    assert time.monotonic() - t < 9  # closed by the server, not by the socket's 10 s timeout
    s = connect(srv.port)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9000000\r\n\r\n" + b"x" * 1000)
    reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 408") and b"body did not arrive within 0.5 s (1,000 bytes came)" in reply
    assert 'reason="body too slow"' in srv.metrics()


def test_connections_past_the_limit_get_503_and_are_closed(serve):
    srv = serve(max_connections=4, header_timeout_s=5)
    held = [connect(srv.port) for _ in range(4)]
    time.sleep(0.2)
    extra = connect(srv.port)
    reply = read_all(extra)
    assert reply.startswith(b"HTTP/1.1 503") and b"4 connections already" in reply
    for s in held:
        s.close()
    time.sleep(0.2)
    assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200  # room again
    assert 'reason="too many connections"' in srv.metrics()


class Picky(torch.nn.Module):
    """Fails on any batch holding a pure white image."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.class_names = model, model.config, model.class_names

    def forward(self, x):
        if (x.flatten(1).min(1).values >= 0.99).any():
            raise RuntimeError("white image")
        return self.model(x)


def white_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_model_failure_fails_only_its_own_request_as_json_and_is_counted(serve, model):
    srv = serve(Picky(model), max_wait_ms=200)

    async def go():
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/predict", content=png(i)) for i in range(3)),
                                        c.post("/v1/predict", content=white_png()))

    *good, bad = asyncio.run(go())
    assert [r.status_code for r in good] == [200, 200, 200]
    assert bad.status_code == 500 and bad.headers["content-type"] == "application/json"
    assert "the model failed on this image (RuntimeError: white image)" in bad.json()["detail"]
    text = srv.metrics()
    assert 'mixerlab_requests_total{path="/v1/predict",status="500"} 1.0' in text
    assert 'mixerlab_requests_total{path="/v1/predict",status="200"} 3.0' in text


def test_a_client_that_disconnects_is_one_log_line_and_counted(serve, caplog):
    srv = serve()
    with caplog.at_level(logging.INFO):
        s = connect(srv.port)
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
        time.sleep(0.3)
        s.close()
        deadline = time.time() + 10
        while 'status="499"' not in srv.metrics() and time.time() < deadline:
            time.sleep(0.1)
    assert 'mixerlab_requests_total{path="/v1/predict",status="499"} 1.0' in srv.metrics()
    mine = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(mine) == 1 and mine[0].exc_info is None
    assert not any(r.exc_info for r in caplog.records)  # no traceback anywhere


def test_the_batch_endpoint_answers_file_by_file(serve):
    srv = serve()
    files = [("files", ("a.png", png(1), "image/png")), ("files", ("b.txt", b"hello", "text/plain")),
             ("files", ("c.png", png(2), "image/png"))]
    out = httpx.post(f"{srv.url}/v1/predict/batch", files=files, timeout=30).json()
    assert out["ok"] == 2 and out["failed"] == 1
    a, b, c = out["results"]
    assert a["file"] == "a.png" and a["top"] and c["top"]
    assert b == {"file": "b.txt", "error": "b.txt: not an image (no known image format)", "status": 415}


def test_the_host_header_is_checked_on_loopback_and_no_path_is_shown(model, tmp_path):
    from mixerlab.serve.limits import default_hosts

    path = tmp_path / "secret-folder" / "mymodel"
    model.save_pretrained(path)
    limits = Limits(allowed_hosts=default_hosts("127.0.0.1"))
    srv = Running(create_app(path, limits=limits), limits)
    try:
        info = httpx.get(f"{srv.url}/v1/model").json()
        assert info["name"] == "mymodel" and "secret-folder" not in json.dumps(info)
        r = httpx.get(f"{srv.url}/v1/model", headers={"Host": "attacker.example:8000"})
        assert r.status_code == 400 and "'attacker.example:8000' is not one this server answers" in r.json()["detail"]
        assert httpx.get(f"{srv.url}/healthz", headers={"Host": "localhost:1234"}).status_code == 200
        assert httpx.get(f"{srv.url}/healthz", headers={"Host": "[::1]:1234"}).status_code == 200
        assert 'status="400"' in srv.metrics()
    finally:
        srv.close()
    assert default_hosts("0.0.0.0") == ("*",)


@pytest.mark.parametrize("flags,text", [
    (["--port", "99999"], "--port: 99999 is not allowed; it must be in [1, 65535]"),
    (["--timeout-s", "-1"], "--timeout-s: -1.0 is not allowed; it must be a finite number above 0"),
    (["--max-body-mb", "-1"], "--max-body-mb: -1.0 is not allowed"),
    (["--read-timeout-s", "nan"], "--read-timeout-s: nan is not allowed"),
    (["--max-wait-ms", "-5"], "--max-wait-ms: -5.0 is not allowed; it must be in [0, 10000]"),
    (["--decode-workers", "-1"], "--decode-workers: -1 is not allowed; it must be an integer of at least 0"),
    (["--max-batch", "64", "--max-queue", "8"], "--max-batch: 64 is over --max-queue 8"),
])
def test_serve_options_are_range_checked_before_anything_starts(tmp_path, model, flags, text, capsys):
    from mixerlab.cli import main as cli

    model.save_pretrained(tmp_path / "m")
    if flags[0] == "--port":  # once as a user runs it: a process of its own
        r = subprocess.run([sys.executable, "-m", "mixerlab", "serve", str(tmp_path / "m"), *flags],
                           capture_output=True, text=True, timeout=120)
        code, err = r.returncode, r.stderr
    else:  # the same main(), in this process (a server that started would block the test here)
        code, err = cli(["serve", str(tmp_path / "m"), *flags]), capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert text in err and "Traceback" not in err

"""`mixerlab serve`: every endpoint, limit and status code, batching, graceful shutdown and the page in
a real browser. Servers listen on free loopback ports only."""

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import mixerlab
from mixerlab.predict import predict_files

from .test_bad_input import make_bomb

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

CLASSES = ["circle", "square", "stripe"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = mixerlab.create_model("mixer_pico", num_classes=3, in_chans=3, img_size=16)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    model.class_names = CLASSES
    path = tmp_path_factory.mktemp("served") / "m"
    model.save_pretrained(path)
    return path


def png(seed: int = 0, size=(16, 16)) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class Served:
    """`mixerlab serve` in a subprocess on a free loopback port."""

    def __init__(self, src, *flags):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "mixerlab", "serve", str(src), "--port", str(self.port),
                                      *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start: {self.proc.stdout.read()[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(model_dir):
    s = Served(model_dir, "--max-wait-ms", "20", "--max-body-mb", "0.05")
    yield s
    s.stop()


def test_health_model_and_metrics(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["classes"] == CLASSES and info["preprocess"]["input_size"] == [3, 16, 16]
    assert info["limits"]["max_body_bytes"] == int(0.05 * 2**20)
    httpx.post(f"{server.url}/v1/predict", content=png())
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("mixerlab_requests_total", "mixerlab_request_seconds_bucket", "mixerlab_batch_size_bucket",
                 "mixerlab_queue_depth", "mixerlab_rejected_total"):
        assert name in text
    assert 'mixerlab_requests_total{path="/v1/predict",status="200"}' in text


def test_predict_raw_and_multipart_agree_with_mixerlab_predict(server, model_dir, tmp_path):
    (tmp_path / "x.png").write_bytes(png(3))
    want = predict_files(mixerlab.from_pretrained(model_dir), [tmp_path / "x.png"], topk=3)[0]["top"]
    raw = httpx.post(f"{server.url}/v1/predict?topk=3", content=png(3)).json()
    multi = httpx.post(f"{server.url}/v1/predict?topk=3", files={"file": ("x.png", png(3), "image/png")}).json()
    for got in (raw, multi):
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want]
        assert max(abs(a["prob"] - b["prob"]) for a, b in zip(got["top"], want)) < 1e-5
        assert got["model"] == model_dir.name and got["time_ms"] > 0 and got["batch_size"] >= 1
    assert len(httpx.post(f"{server.url}/v1/predict?topk=9", content=png()).json()["top"]) == 3  # all there are
    batch = httpx.post(f"{server.url}/v1/predict/batch?topk=1",
                       files=[("files", (f"{i}.png", png(i), "image/png")) for i in range(3)]).json()
    assert [r["file"] for r in batch["results"]] == ["0.png", "1.png", "2.png"]
    assert all(len(r["top"]) == 1 for r in batch["results"])


@pytest.mark.parametrize("kind,status,text", [
    ("too big", 413, "over the limit"), ("not an image", 415, "not an image"), ("bomb", 413, "too large"),
    ("topk 0", 422, "greater than or equal to 1"), ("topk two", 422, "valid integer"), ("empty", 422, "no image"),
    ("no file field", 422, "no multipart field 'file'"),
])
def test_each_bad_request_gets_its_status_and_a_json_reason(server, tmp_path, kind, status, text):
    url = f"{server.url}/v1/predict"
    if kind == "too big":
        r = httpx.post(url, content=b"\0" * 60_000)
    elif kind == "not an image":
        r = httpx.post(url, content=b"hello")
    elif kind == "bomb":
        r = httpx.post(url, content=make_bomb(tmp_path / "b.png", side=9000).read_bytes())
    elif kind == "empty":
        r = httpx.post(url, content=b"")
    elif kind == "no file field":
        r = httpx.post(url, files={"image": ("x.png", png(), "image/png")})
    else:
        r = httpx.post(f"{url}?topk={kind.split()[1]}", content=png())
    assert r.status_code == status
    assert text in json.dumps(r.json()["detail"])
    assert httpx.get(f"{server.url}/readyz").status_code == 200  # still up


def test_concurrent_requests_form_batches_and_bad_ones_spoil_nothing(server):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            goods = [c.post("/v1/predict", content=png(i)) for i in range(12)]
            bads = [c.post("/v1/predict", content=b"garbage") for _ in range(4)]
            return await asyncio.gather(*goods, *bads)

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * 12 + [415] * 4
    assert max(r.json()["batch_size"] for r in responses[:12]) > 1
    text = httpx.get(f"{server.url}/metrics").text
    assert "mixerlab_batch_size_count" in text


def test_sigterm_finishes_requests_in_flight_and_exits_0(model_dir):
    s = Served(model_dir, "--max-wait-ms", "500", "--max-batch", "64")

    async def go():
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
            pending = [asyncio.create_task(c.post("/v1/predict", content=png(i))) for i in range(8)]
            await asyncio.sleep(0.2)  # in the batcher's 500 ms window
            s.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*pending)

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * 8
    assert s.stop() == 0


class Slow(torch.nn.Module):
    """A model that takes its time, to fill the queue."""

    def __init__(self, model, seconds):
        super().__init__()
        self.model, self.seconds = model, seconds
        self.config, self.class_names = model.config, model.class_names

    def forward(self, x):
        time.sleep(self.seconds)
        return self.model(x)


def test_a_full_queue_sheds_load_with_503_and_a_slow_answer_is_a_504(model_dir):
    from mixerlab.serve import Limits, create_app

    model = mixerlab.from_pretrained(model_dir)

    async def go(app, n):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            await c.get("/readyz")
            return await asyncio.gather(*(c.post("/v1/predict", content=png(i)) for i in range(n)))

    shedding = create_app(Slow(model, 0.3), limits=Limits(max_queue=2, max_batch=1, max_wait_ms=0))
    for _ in range(2):  # the second on a new event loop: the batcher of the first is restarted on it
        got = asyncio.run(go(shedding, 8))
        codes = [r.status_code for r in got]
        assert codes.count(503) >= 3 and codes.count(200) >= 2 and set(codes) == {200, 503}
    refused = [r for r in got if r.status_code == 503][0]
    assert refused.headers["retry-after"] == "1" and "queue is full" in refused.json()["detail"]
    slow = create_app(Slow(model, 0.6), limits=Limits(timeout_s=0.2, max_wait_ms=0))
    r = asyncio.run(go(slow, 1))[0]
    assert r.status_code == 504 and "no answer within 0.2 s" in r.json()["detail"]


def test_start_up_warms_the_decoding_path_before_it_says_ready(model_dir, monkeypatch):
    # the first decode imports torchvision (seconds): a server that only warmed the model would make its
    # first user wait for that
    from mixerlab.serve import app as app_mod

    seen = []
    real = app_mod.Server._decode_now
    monkeypatch.setattr(app_mod.Server, "_decode_now", lambda self, data: seen.append(data) or real(self, data))

    async def go():
        transport = httpx.ASGITransport(app=app_mod.create_app(model_dir))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return (await c.get("/readyz")).json()

    assert asyncio.run(go()) == {"status": "ready"}
    assert len(seen) == 1 and Image.open(io.BytesIO(seen[0])).size == (16, 16)


def test_an_exported_onnx_file_is_served(model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from mixerlab.cli import main as cli

    assert cli(["export", str(model_dir), str(tmp_path / "m.onnx")]) == 0
    s = Served(tmp_path / "m.onnx", "--backend", "onnx")
    try:
        info = httpx.get(f"{s.url}/v1/model").json()
        assert info["backend"] == "onnx" and info["classes"] == CLASSES
        got = httpx.post(f"{s.url}/v1/predict", content=png(5)).json()["top"]
    finally:
        assert s.stop() == 0
    (tmp_path / "x.png").write_bytes(png(5))
    want = predict_files(mixerlab.from_pretrained(model_dir), [tmp_path / "x.png"])[0]["top"]
    assert [t["class"] for t in got] == [t["class"] for t in want]



def test_the_page_classifies_an_image_in_a_real_browser(server, tmp_path, browser):
    (tmp_path / "x.png").write_bytes(png(7))
    want = httpx.post(f"{server.url}/v1/predict", content=png(7)).json()["top"][0]["class"]
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#model:has-text('3 classes')")
    page.set_input_files("#file", str(tmp_path / "x.png"))
    page.wait_for_selector("#result .row")
    rows = page.locator("#result .row")
    assert rows.count() == 3  # the top-5 of a 3-class model
    assert rows.first.get_attribute("data-cls") == want
    assert rows.first.locator(".bar").evaluate("e => parseFloat(e.style.width)") > 0
    preview, desc, drop = (page.locator(s).bounding_box() for s in ("#preview", "#model", "#drop"))
    assert preview["width"] >= 150  # a 16 px image is shown large enough to see
    assert desc["y"] + desc["height"] <= drop["y"]  # the description does not overlap the drop box
    assert "circle" in page.locator("#classlist").text_content()
    (tmp_path / "notes.txt").write_text("not an image")
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#result .error")
    err = page.locator("#result .error").inner_text()
    assert err.startswith("This file is not an image the server can read: not an image") and "(HTTP 415)" in err
    page.screenshot(path=str(tmp_path / "page.png"))
    assert httpx.get(f"{server.url}/docs").status_code == 404  # its assets would come from a CDN
    assert httpx.get(f"{server.url}/openapi.json").json()["info"]["title"] == "mixerlab"


def test_the_same_app_deploys_on_a_local_ray_serve(model_dir, monkeypatch, tmp_path):
    """The documented scale-out: a single-node Ray on this machine, two replicas, loopback HTTP."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray")
    from ray import serve

    from mixerlab.serve.ray import deployment

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(model_dir, replicas=2), name="mixerlab", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz", timeout=30).json() == {"status": "ready"}
        got = httpx.post(f"{url}/v1/predict?topk=2", content=png(1), timeout=60).json()["top"]
        (tmp_path / "x.png").write_bytes(png(1))
        want = predict_files(mixerlab.from_pretrained(model_dir), [tmp_path / "x.png"], topk=2)[0]["top"]
        assert [t["class"] for t in got] == [t["class"] for t in want]
        assert httpx.post(f"{url}/v1/predict", content=b"nope", timeout=60).status_code == 415
    finally:
        serve.shutdown()
        ray.shutdown()


def test_a_missing_serve_extra_is_named(monkeypatch, capsys):
    import builtins
    import sys as _sys

    from mixerlab.cli import main as cli

    real = builtins.__import__

    def no_fastapi(name, *a, **kw):
        if name == "fastapi" or name.startswith("fastapi."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *a, **kw)

    for mod in [m for m in _sys.modules if m.startswith("mixerlab.serve")]:
        monkeypatch.delitem(_sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    assert cli(["serve", "runs/x"]) == 2
    assert "pip install 'mixerlab[serve]'" in capsys.readouterr().err

"""Load test of `mixerlab serve`: N concurrent clients for T seconds against a server on loopback, and
the offline throughput of the same model at the same batch size, measured in the same run.

    .venv/bin/python benchmarks/bench_serve.py runs/demo --clients 16 --seconds 20
    .venv/bin/python benchmarks/bench_serve.py mixer_b16_224 --clients 16 --seconds 60   # random B/16
    .venv/bin/python benchmarks/bench_serve.py runs/demo --bad 1000     # 1,000 bad requests mixed in

Prints served img/s, p50/p95/p99 latency, the batch sizes the server formed (from its /metrics), the
offline img/s, and their ratio. With --bad N it also sends N bad requests of every kind among 8 valid
clients and checks that each bad one got a 4xx, each valid one a 200 with the top-1 of `mixerlab
predict`, and that /readyz still answers. Only 127.0.0.1 is contacted; the loops are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

import mixerlab
from mixerlab.data.transforms import image_for_model
from mixerlab.perf.timing import machine_info, time_call
from mixerlab.predict import probabilities


def images(cfg, n: int = 16) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = rng.integers(0, 256, (*cfg.img_size, 3) if cfg.in_chans == 3 else tuple(cfg.img_size), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def offline(model, cfg, payloads: list[bytes], batch: int) -> float:
    """img/s of decode + preprocessing + model at the server's batch size, in this process."""
    x = torch.stack([image_for_model(p, cfg) for p in payloads])
    x = x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
    return batch / time_call(lambda: probabilities(model, x), torch.device("cpu"), warmup=2, iters=3, repeats=3)


def batch_sizes(metrics: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'mixerlab_batch_size_bucket\{le="([^"]+)"\} (\S+)',
                                                                metrics)}


async def load(url: str, payloads: list[bytes], clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            k = i
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await c.post("/v1/predict", content=payloads[k % len(payloads)])
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)
                k += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies


def bad_requests(bomb: bytes) -> list[tuple[str, dict]]:
    return [("not an image", {"content": b"hello"}), ("empty", {"content": b""}),
            ("too big", {"content": b"\0" * (11 << 20)}), ("bomb", {"content": bomb}),
            ("topk 0", {"content": b"x", "params": {"topk": 0}}),
            ("wrong field", {"files": {"image": ("x.png", b"x", "image/png")}})]


async def mixed(url: str, payloads: list[bytes], want: list[int], n_bad: int, bomb: bytes) -> dict:
    kinds = bad_requests(bomb)
    bad_codes: list[tuple[str, int]] = []
    good: list[bool] = []

    async def valid(i: int, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            k = i
            while not stop.is_set():
                r = await c.post("/v1/predict", content=payloads[k % len(payloads)])
                good.append(r.status_code == 200 and r.json()["top"][0]["index"] == want[k % len(payloads)])
                k += 8

    async def bad(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            for j in range(i, n_bad * len(kinds), 4):
                name, kw = kinds[j % len(kinds)]
                r = await c.post("/v1/predict", **kw)
                bad_codes.append((name, r.status_code))

    stop = asyncio.Event()
    goods = [asyncio.create_task(valid(i, stop)) for i in range(8)]
    await asyncio.gather(*(bad(i) for i in range(4)))
    stop.set()
    await asyncio.gather(*goods)
    async with httpx.AsyncClient(base_url=url) as c:
        ready = (await c.get("/readyz")).status_code
    return {"bad_requests": len(bad_codes), "bad_all_4xx": all(400 <= s < 500 for _, s in bad_codes),
            "bad_status": sorted({f"{n}: {s}" for n, s in bad_codes}), "valid_requests": len(good),
            "valid_all_correct": all(good), "readyz_after": ready}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a checkpoint, an exported .onnx, or a registered model name (random weights)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5)
    p.add_argument("--bad", type=int, default=0, help="bad requests of each kind to mix in (0: none)")
    args = p.parse_args()
    mixerlab.tune_cpu_allocator()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.src
        if src in mixerlab.list_models():
            m = mixerlab.create_model(src)
            torch.nn.init.normal_(m.head.weight, std=0.02)
            m.save_pretrained(Path(tmp) / "m")
            src = str(Path(tmp) / "m")
        model = mixerlab.from_pretrained(src).eval()
        cfg = model.config
        payloads = images(cfg)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "mixerlab", "serve", src, "--port", str(port), "--max-batch",
                                   str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            before = batch_sizes(httpx.get(f"{url}/metrics").text)
            t = time.perf_counter()
            lat = asyncio.run(load(url, payloads, args.clients, args.seconds))
            served = len(lat) / (time.perf_counter() - t)
            after = batch_sizes(httpx.get(f"{url}/metrics").text)
            q = statistics.quantiles(lat, n=100)
            res = {"machine": machine_info(), "src": args.src, "clients": args.clients, "requests": len(lat),
                   "served_img_s": served, "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94], "p99_ms": 1000 * q[98],
                   "batches_by_size_le": {k: after[k] - before.get(k, 0) for k in after}}
            if args.bad:
                want = [int(probabilities(model, image_for_model(pl, cfg)[None]).argmax()) for pl in payloads]
                bomb_path = Path(tmp) / "bomb.png"
                sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests/
                from tests.test_bad_input import make_bomb  # a valid 20000x20000 PNG of a few hundred KB

                res["mixed"] = asyncio.run(mixed(url, payloads, want, args.bad, make_bomb(bomb_path).read_bytes()))
        finally:
            server.send_signal(signal.SIGTERM)
            res_code = server.wait(timeout=60)
        torch.set_num_threads(os.cpu_count() or 1)
        res["offline_img_s"] = offline(model, cfg, payloads, args.max_batch)
        res["served_over_offline"] = res["served_img_s"] / res["offline_img_s"]
        res["p99_over_p50"] = res["p99_ms"] / res["p50_ms"]
        res["server_exit_code"] = res_code
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Streaming: image folders and WebDataset shards decoded in worker processes, exact mid-epoch resume
with workers, bad files skipped and counted, each process its own part, shards over HTTP."""

import http.server
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.data.sources import load_dataset
from mixerlab.data.stream import EpochSampler
from mixerlab.training.config import TrainConfig
from mixerlab.training.loop import train
from tests.test_distributed import launch_failure

pytest.importorskip("webdataset")
pytest.importorskip("torchdata")

TINY = {"embed_dim": 16, "tokens_mlp_dim": 8, "channels_mlp_dim": 32, "depth": 2}


def make_jpeg_folder(root: Path, n=16, size=(20, 24), bad=True) -> Path:
    """Three classes of JPEGs a tiny model can tell apart (a bright band per class), and a corrupt file."""
    rng = np.random.default_rng(0)
    for part, count in (("train", n), ("val", n // 2)):
        for ci in range(3):
            d = root / part / f"c{ci}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                a = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
                a[ci * 6:ci * 6 + 6, :, ci] = 250
                Image.fromarray(a).save(d / f"{i}.jpg", quality=95)
    if bad:
        (root / "train" / "c1" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), epochs=2, batch_size=8, img_size=16, precision="fp32", quiet=True,
                workers=2, model_args=dict(TINY), lr=3e-3, seed=3)
    return TrainConfig(**{**base, **kw})


def _same_run(a: Path, b: Path):
    sa = torch.load(a / "last.pt", weights_only=True)
    sb = torch.load(b / "last.pt", weights_only=True)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(ma, mb, strict=True):
        for k in ("train_loss", "val_loss", "val_top1", "grad_norm", "grad_norm_max", "bad_images"):
            assert ra[k] == rb[k], (k, ra[k], rb[k])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_jpeg_folder(tmp_path_factory.mktemp("stream") / "imgs")


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "shards"
    assert cli(["data", "pack", str(folder), str(out), "--shard-size", "8"]) == 0
    return out


def test_folder_streams_and_resumes_bitwise_with_two_workers(folder, tmp_path):
    whole = train(_cfg(folder, tmp_path / "whole", stream=True))
    assert whole["epochs"] == 2
    # stopped in the middle of the first epoch, resumed: the same weights and metrics, bit for bit
    stopped = train(_cfg(folder, tmp_path / "parts", stream=True), stop_after_steps=3)
    assert stopped["stopped"]
    train(resume=str(tmp_path / "parts"))
    _same_run(tmp_path / "whole", tmp_path / "parts")
    rows = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    # the corrupt file is in the training set once: counted in each epoch it was drawn in, never fatal
    assert sum(r["bad_images"] for r in rows) >= 1 and all(r["bad_images"] <= 1 for r in rows)
    assert rows[-1]["val_top1"] > 0.5


def test_shards_train_evaluate_and_resume_bitwise_with_two_workers(shards, tmp_path):
    index = json.loads((shards / "dataset.json").read_text())
    assert index["classes"] == ["c0", "c1", "c2"] and index["img_size"] == [20, 24]
    assert sum(index["splits"]["train"]["counts"].values()) == 49  # 48 images and the corrupt file
    pattern = str(shards / index["splits"]["train"]["pattern"])
    train(_cfg(pattern, tmp_path / "whole"))
    members = [n for t in sorted(shards.glob("train-*.tar")) for n in tarfile.open(t).getnames()]
    assert any(n.endswith("-zz_corrupt.jpg") for n in members)  # keys name the files they came from
    with tarfile.open(shards / "train-000000.tar") as t:  # shuffled when packed: not one class a shard
        assert len({t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".cls")}) > 1
    train(_cfg(pattern, tmp_path / "parts"), stop_after_steps=4)  # mid-epoch: 6 steps an epoch
    ckpt = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)
    assert ckpt["step_in_epoch"] == 4 and len(ckpt["ranks"]) == 1 and ckpt["ranks"][0]["loader"] is not None
    train(resume=str(tmp_path / "parts"))
    _same_run(tmp_path / "whole", tmp_path / "parts")
    # a packed folder is also accepted as --data, and eval reads the validation shards
    assert cli(["eval", str(tmp_path / "whole"), "--data", str(shards), "--workers", "2",
                "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["count"] == 24 and ev["unusable"] == 0
    assert (tmp_path / "ev" / "eval_hardest.png").is_file() or not ev["hardest"]


def test_bad_file_fails_the_run_under_strict(folder, tmp_path):
    with pytest.raises(mixerlab.DataError, match=r"zz_corrupt\.jpg: not an image.*--strict"):
        train(_cfg(folder, tmp_path / "r", stream=True, strict=True, epochs=1))


def test_memory_budget_chooses_the_path(folder, caplog):
    caplog.set_level(logging.INFO, logger="mixerlab")
    small = load_dataset(str(folder), budget_bytes=10_000, workers=0)
    assert small.streaming and small.img_size == (20, 24) and len(small.train) == 49
    assert "over the memory budget" in caplog.text
    assert not load_dataset(str(folder), budget_bytes=10**12).streaming
    assert not load_dataset(str(folder), stream=False, budget_bytes=10).streaming
    with pytest.raises(mixerlab.DataError, match="--stream is for image folders"):
        load_dataset("fashion-mnist", stream=True)


def test_each_process_and_worker_sees_its_own_part(shards):
    # folders: the ranks' samplers partition the epoch, as DistributedSampler does in memory
    parts = []
    for rank in range(2):
        s = EpochSampler(49, seed=1, rank=rank, world_size=2)
        s.set_epoch(3)
        parts.append([i for i, _ in s])
    assert not set(parts[0]) & set(parts[1]) and len(parts[0]) == len(parts[1]) == 24
    # shards: (process, worker) slots read disjoint shards; together, every sample once
    data = load_dataset(str(shards), workers=2)
    seen = []
    cfg = mixerlab.create_model("mixer_nano", img_size=16, num_classes=3).config
    for rank in range(2):
        for ids, _, _, errors in data.val.eval_batches(cfg, 5, rank, 2):
            seen += ids.tolist()
            assert not errors
    assert len(seen) == len(set(seen)) == 24


def test_shards_over_http(shards, tmp_path):
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(shards), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train-{{000000..000006}}.tar"
        summary = train(_cfg(url, tmp_path / "r", epochs=1))
        assert summary["epochs"] == 1 and summary["val_top1"] >= 0
    finally:
        server.shutdown()


def test_pack_and_shard_errors(folder, shards, tmp_path, capsys):
    assert cli(["data", "pack", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "nope: no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["data", "pack", str(folder), str(tmp_path / "o"), "--shard-size", "0"])
    assert "--shard-size: 0 is not allowed" in capsys.readouterr().err
    with pytest.raises(mixerlab.DataError, match=r"3 shard\(s\) not in .*dataset.json, e.g. .*train-000007.tar"):
        load_dataset(str(shards / "train-{000000..000009}.tar"))
    (tmp_path / "lone").mkdir()
    (tmp_path / "lone" / "train-000000.tar").write_bytes(b"")
    with pytest.raises(mixerlab.DataError, match="no dataset.json beside the shards"):
        load_dataset(str(tmp_path / "lone" / "train-000000.tar"))


def test_a_folders_test_split_streams_and_is_packed(tmp_path):
    root = make_jpeg_folder(tmp_path / "imgs", n=8, bad=False)
    (root / "val").rename(root / "test")
    ds = load_dataset(str(root), stream=True, val_split=0.25, workers=0)
    assert ds.streaming and (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 12)
    index = mixerlab.data.shards.pack_folder(root, tmp_path / "packed", 100, val_split=0.25, progress=False)
    assert {k: sum(v["counts"].values()) for k, v in index["splits"].items()} == {"train": 18, "val": 6, "test": 12}


def test_torchrun_two_processes_stream_shards(shards, tmp_path):
    run = tmp_path / "run"
    args = ["--data", str(shards), "--model", "mixer_nano", "--batch-size", "4", "--epochs", "1", "--img-size", "16",
            "--precision", "fp32", "--quiet", "--workers", "1", "--out", str(run)]
    args += sum((["--model-arg", f"{k}={v}"] for k, v in TINY.items()), [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mixerlab",
           "train", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, launch_failure(r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 1


def _ddp_worker(rank: int, world: int, jobs: list):
    """Runs each (port, config or run folder to resume, steps to stop after) in turn, each train()
    with a process group of its own: one spawn (and torch import) for several runs."""
    import multiprocessing

    # A process made by mp.spawn makes its own children by spawn too (each importing torch afresh);
    # ranks under torchrun or `--processes`, as users run them, fork their loader workers.
    multiprocessing.set_start_method("fork", force=True)
    torch.set_num_threads(1)
    for port, cfg, stop in jobs:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        if isinstance(cfg, str):
            train(resume=cfg)
        else:
            train(cfg, stop_after_steps=stop)


def test_two_processes_resume_shards_mid_epoch_bitwise(shards, tmp_path):
    """Under DDP every process's shard reader position is saved (gathered to rank 0) and restored."""
    import socket

    import torch.multiprocessing as mp

    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    base = dict(batch_size=4, workers=1, optimizer="adamw", epochs=1)
    parts = tmp_path / "parts"
    jobs = [(port(), _cfg(shards, tmp_path / "whole", **base), None), (port(), _cfg(shards, parts, **base), 2)]
    mp.spawn(_ddp_worker, args=(2, jobs), nprocs=2)
    ckpt = torch.load(parts / "last.pt", weights_only=True)
    ranks = ckpt["ranks"]
    assert ckpt["step_in_epoch"] == 2 and len(ranks) == 2 and ranks[0]["loader"] != ranks[1]["loader"]
    mp.spawn(_ddp_worker, args=(2, [(port(), str(parts), None)]), nprocs=2)
    _same_run(tmp_path / "whole", tmp_path / "parts")

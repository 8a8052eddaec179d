"""Training, evaluation and prediction on tiny generated datasets, in every supported format."""

import gzip
import hashlib
import http.server
import json
import pickle
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.data import datasets as data_mod
from mixerlab.data.sources import load_dataset
from mixerlab.errors import TrainingError
from mixerlab.evaluate import evaluate
from mixerlab.training.config import TrainConfig
from mixerlab.training.loop import train
from mixerlab.training.recipes import resolve

TINY = {"embed_dim": 16, "tokens_mlp_dim": 8, "channels_mlp_dim": 32, "depth": 2}


def make_image_folder(root: Path, classes=("circle", "square", "stripe"), n=12, size=16, split=True):
    """Classes a tiny model can tell apart: a bright blob at a class-specific place."""
    rng = np.random.default_rng(0)
    for part in (["train", "val"] if split else [""]):
        for ci, c in enumerate(classes):
            d = root / part / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n if part != "val" else n // 2):
                a = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                a[ci * 5:ci * 5 + 5, :, ci % 3] = 250
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def write_idx(path: Path, array: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def make_idx_dir(root: Path, n_train=64, n_val=32):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 50, (n, 28, 28))
        images[np.arange(n), labels * 2, :] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_cfg(tmp_path, data, **kw):
    base = dict(data=str(data), model="mixer_nano", model_args=dict(TINY, patch_size=4), epochs=2, batch_size=8,
                lr=3e-3, warmup_epochs=0.5, precision="fp32", out=str(tmp_path / "run"), quiet=True,
                eval_batch_size=16)
    base.update(kw)
    return resolve("scratch", **base)


def test_image_folder_run_writes_everything(tmp_path):
    root = make_image_folder(tmp_path / "shapes")
    summary = train(tiny_cfg(tmp_path, root, epochs=3))
    run = tmp_path / "run"
    for f in ("config.json", "last.pt", "best.pt", "metrics.jsonl", "steps.jsonl", "summary.json", "report.md",
              "loss.png", "accuracy.png", "lr.png", "confusion.png", "samples.png", "final_eval.json"):
        assert (run / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "step", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr",
                            "images_per_s", "data_time_share", "elapsed_s", "grad_norm", "grad_norm_max", "bad_images"}
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(1, rows[-1]["step"] + 1))  # every step, warmup included
    assert steps[0]["lr"] < steps[1]["lr"] and all(0 <= r["train_top1"] <= 1 for r in steps)
    # the epoch's loss is the mean of its steps' losses
    per_epoch = rows[0]["step"]
    assert rows[0]["train_loss"] == pytest.approx(sum(r["loss"] for r in steps[:per_epoch]) / per_epoch)
    assert rows[0]["train_top1"] == pytest.approx(sum(r["train_top1"] for r in steps[:per_epoch]) / per_epoch)
    assert all(r["bad_images"] == 0 for r in rows)
    assert all(r["grad_norm_max"] >= r["grad_norm"] > 0 for r in rows)
    s = json.loads((run / "summary.json").read_text())
    assert s == summary and 0 <= s["val_top1"] <= 1 and s["world_size"] == 1 and s["dataset"] == "shapes"
    assert s["val_top1"] > 0.9  # the classes are trivially separable
    model = mixerlab.from_pretrained(run)
    assert model.class_names == ["circle", "square", "stripe"] and model.config.img_size == (16, 16)


def test_eval_and_predict_cli(tmp_path, capsys):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=3))
    run = tmp_path / "run"
    assert cli(["eval", str(run), "--data", str(root), "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(res["per_class"]) == {"circle", "square", "stripe"} and res["top5"] == 1.0
    assert (tmp_path / "ev" / "eval_confusion.png").is_file()
    capsys.readouterr()
    assert cli(["predict", str(run), str(root / "val" / "square"), "--topk", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 6 and all(len(r["top"]) == 2 for r in out)
    assert sum(r["top"][0]["class"] == "square" for r in out) >= 5
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert cli(["predict", str(run), str(tmp_path / "broken.png")]) == 1
    assert "unreadable image" in capsys.readouterr().out


def test_flip_tta_averages_the_two_views(tmp_path, capsys):
    from mixerlab.data.datasets import Split
    from mixerlab.data.transforms import prepare
    from mixerlab.evaluate import evaluate

    torch.manual_seed(0)
    model = mixerlab.create_model("mixer_micro", num_classes=4, img_size=16, in_chans=1, patch_size=4, **TINY)
    torch.nn.init.normal_(model.head.weight)  # the zero-initialised head would give uniform predictions
    split = Split(torch.randint(0, 256, (10, 1, 16, 16), dtype=torch.uint8), torch.randint(0, 4, (10,)))
    res = evaluate(model, split, 4, batch_size=4, tta=True)
    with torch.no_grad():
        x = prepare(split.images, model, torch.device("cpu"))
        probs = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
    want_loss = torch.nn.functional.nll_loss(probs.log(), split.labels).item()
    assert res["tta"] == "flip" and res["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert res["top1"] == pytest.approx((probs.argmax(1) == split.labels).float().mean().item())
    plain = evaluate(model, split, 4, batch_size=4)
    assert plain["tta"] is None and plain["loss"] != pytest.approx(want_loss, rel=1e-5)
    # From the CLI: the TTA result sits beside the plain one and never overwrites it.
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=1))
    ev = tmp_path / "ev"
    assert cli(["eval", str(tmp_path / "run"), "--data", str(root), "--out", str(ev)]) == 0
    assert cli(["eval", str(tmp_path / "run"), "--data", str(root), "--out", str(ev), "--tta"]) == 0
    assert "flip TTA" in capsys.readouterr().out
    assert json.loads((ev / "eval.json").read_text())["tta"] is None
    assert json.loads((ev / "eval_tta.json").read_text())["tta"] == "flip"
    assert (ev / "eval_tta_confusion.png").is_file()


def test_optimizer_uses_the_fused_kernel_where_torch_has_one():
    from mixerlab.training.optim import make_fused
    from mixerlab.training.setup import build_optimizer

    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(TrainConfig(), model)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["fused"] is True  # torch >= 2.4 on CPU
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]  # weight decayed, bias not

    class NoFused(torch.optim.SGD):  # what torch < 2.4 does on a CPU
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be on supported devices")
            super().__init__(params, **kw)

    fallback = make_fused(NoFused, model.parameters(), lr=0.1)
    assert len(fallback.param_groups[0]["params"]) == 2  # the generator was not spent by the first try


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bitwise_exact(tmp_path, optimizer):
    root = make_image_folder(tmp_path / "shapes")
    cfg = tiny_cfg(tmp_path, root, drop_path_rate=0.1, mixup=0.2, ema=0.9, optimizer=optimizer)
    straight = TrainConfig.from_dict({**cfg.to_dict(), "out": str(tmp_path / "straight")})
    train(straight)
    # 1 epoch and a bit, a kill, then the resume finishes the 2nd epoch.
    steps = 36 // 8
    stopped = train(cfg, stop_after_steps=steps + 2)
    assert stopped["stopped"] and stopped["resume_command"] == f"mixerlab train --resume {tmp_path / 'run'}"
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 2)
    train(resume=str(tmp_path / "run"))
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    opt_a, opt_b = (x["optimizer"].get("adamw", x["optimizer"]) for x in (a, b))  # muon holds two
    assert opt_a["state"][0]["step"] == opt_b["state"][0]["step"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_existing_run_is_not_overwritten(tmp_path):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=1))
    with pytest.raises(TrainingError, match="already holds a run"):
        train(tiny_cfg(tmp_path, root, epochs=1))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import mixerlab.training.loop as tr

    root = make_image_folder(tmp_path / "shapes")
    real, calls = tr.train_step, {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        r = real(*a, **kw)
        return r._replace(loss=float("nan")) if calls["n"] == 6 else r

    monkeypatch.setattr(tr, "train_step", flaky)
    with pytest.raises(TrainingError, match="loss became nan at epoch 2, step 2.*last good checkpoint"):
        train(tiny_cfg(tmp_path, root))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_gradient_accumulation_equals_the_big_batch():
    from mixerlab.training.step import train_step

    torch.manual_seed(0)
    cfg = TrainConfig(label_smoothing=0.1, mixup=0.0, clip_grad=0.0, lr=0.1, weight_decay=0.0, optimizer="sgd")
    x = torch.randint(0, 255, (16, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (16,))
    models = [mixerlab.create_model("mixer_nano", **TINY) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    train_step(models[0], [(x, y)], opts[0], cfg, 10, torch.device("cpu"), "fp32")
    train_step(models[1], [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)], opts[1], cfg, 10,
               torch.device("cpu"), "fp32")
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- data
def test_idx_dataset_from_data_dir(tmp_path):
    make_idx_dir(tmp_path / "mnist")
    ds = load_dataset("mnist", str(tmp_path), val_split=0)
    assert ds.train.images.shape == (64, 1, 28, 28) and ds.val is None and ds.test.labels.shape == (32,)
    assert ds.num_classes == 10


def test_download_against_a_local_server(tmp_path, monkeypatch):
    files = make_idx_dir(tmp_path / "served")
    sums = {p.name[:-3]: hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest() for p in files.glob("*.gz")}
    monkeypatch.setitem(data_mod.IDX_SHA256, "fashion-mnist", sums)
    monkeypatch.setitem(data_mod.SYSTEM_DIRS, "fashion-mnist", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MIXERLAB_DATA", raising=False)

    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(files), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setenv("MIXERLAB_MIRROR", url)
        ds = load_dataset("fashion-mnist", str(tmp_path / "dl"), val_split=0)
        assert ds.train.images.shape == (64, 1, 28, 28) and ds.classes[0] == "T-shirt/top"
        assert (tmp_path / "dl" / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
        # a file that does not match its checksum is refused, and nothing is written
        monkeypatch.setitem(data_mod.IDX_SHA256, "fashion-mnist", {**sums, "t10k-labels-idx1-ubyte": "0" * 64})
        with pytest.raises(mixerlab.DataError, match="checksum mismatch"):
            load_dataset("fashion-mnist", str(tmp_path / "dl2"))
        assert not (tmp_path / "dl2" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    finally:
        server.shutdown()


def test_an_unreachable_mirror_says_how_to_give_the_files_by_hand(tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setitem(data_mod.SYSTEM_DIRS, "fashion-mnist", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MIXERLAB_DATA", raising=False)
    with socket.socket() as s:  # a port nothing listens on: refused at once, as offline is
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MIXERLAB_MIRROR", f"http://127.0.0.1:{port}/")
    assert cli(["train", "--data", "fashion-mnist", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"could not download train-images-idx3-ubyte for fashion-mnist: http://127.0.0.1:{port}/" in err
    assert "put the four files (train-images-idx3-ubyte.gz, " in err
    assert str(tmp_path / "home" / ".cache" / "mixerlab" / "fashion-mnist") in err
    assert "apt-get install dataset-fashion-mnist" in err and "MIXERLAB_MIRROR" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cifar_format_folder(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    ds = load_dataset("cifar10", str(tmp_path), val_split=0.1)
    assert ds.train.images.shape == (18, 3, 32, 32) and ds.val.images.shape == (2, 3, 32, 32)
    assert ds.test.images.shape == (4, 3, 32, 32)
    assert ds.classes == [f"c{i}" for i in range(10)]
    (base / "test_batch").write_bytes(pickle.dumps({"data": __import__("os").system}))
    with pytest.raises(mixerlab.DataError, match="test_batch: not a CIFAR python-format file: refusing"):
        load_dataset("cifar10", str(tmp_path))


def test_val_split_of_a_single_folder(tmp_path):
    root = make_image_folder(tmp_path / "flat", n=10, split=False)
    ds = load_dataset(str(root), val_split=0.2)
    assert len(ds.train) == 24 and len(ds.val) == 6 and ds.img_size == (16, 16) and ds.in_chans == 3


def test_data_errors(tmp_path):
    with pytest.raises(mixerlab.DataError, match="unknown dataset 'imagenet-99'"):
        load_dataset("imagenet-99")
    (tmp_path / "empty").mkdir()
    with pytest.raises(mixerlab.DataError, match="no class folders"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    with pytest.raises(mixerlab.DataError, match="class folders with no images: cat"):
        load_dataset(str(tmp_path / "hollow"))
    root = make_image_folder(tmp_path / "mismatch")
    (root / "val" / "stripe").rename(root / "val" / "zigzag")
    with pytest.raises(mixerlab.DataError, match="different classes.*stripe.*zigzag"):
        load_dataset(str(root))


def test_corrupt_images_are_named_and_skipped_or_fail_with_strict(tmp_path, caplog):
    root = make_image_folder(tmp_path / "shapes")
    (root / "train" / "circle" / "bad.png").write_bytes(b"\x89PNG garbage")
    with caplog.at_level("WARNING"):
        ds = load_dataset(str(root))
    assert "skipped 1 unusable image(s)" in caplog.text and "bad.png: not an image" in caplog.text
    assert len(ds.train) == 36
    with pytest.raises(mixerlab.DataError, match="bad.png: not an image"):
        load_dataset(str(root), strict=True)


def test_config_file_then_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("recipe: finetune\nepochs: 7\nlr: 0.01\n")
    cfg = resolve("scratch", str(tmp_path / "c.yaml"), lr=0.02)
    assert (cfg.recipe, cfg.optimizer, cfg.epochs, cfg.lr, cfg.weight_decay) == ("finetune", "sgd", 7, 0.02, 0.0)
    (tmp_path / "c.toml").write_text('epochs = 3\nbogus = 1\n')
    with pytest.raises(ValueError, match="unknown training config keys: \\['bogus'\\]"):
        resolve("scratch", str(tmp_path / "c.toml"))


def test_finetune_from_a_checkpoint_replaces_the_head(tmp_path, official_dir):
    root = make_image_folder(tmp_path / "shapes", size=32)
    cfg = resolve("finetune", data=str(root), pretrained=str(official_dir / "tiny_p4" / "params.npz"), epochs=1,
                  batch_size=8, precision="fp32", out=str(tmp_path / "ft"), quiet=True)
    summary = train(cfg)
    model = mixerlab.from_pretrained(tmp_path / "ft")
    assert model.num_classes == 3 and model.config.embed_dim == 64 and summary["val_top1"] >= 0


def test_sigterm_stops_cleanly_with_a_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = make_image_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mixerlab", "train", "--data", str(root), "--model", "mixer_nano", "--epochs", "500",
            "--batch-size", "4", "--precision", "fp32", "--quiet", "--out", str(run)]
    args += sum((["--model-arg", f"{k}={v}"] for k, v in TINY.items()), [])
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:  # at least one epoch done
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "resume with: mixerlab train --resume" in out
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] >= 1 and not (run / "summary.json").exists()


def test_resuming_a_finished_run_writes_nothing(tmp_path):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=1))
    run = tmp_path / "run"
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in run.iterdir() if f.is_file()}
    summary = train(resume=str(run))
    assert summary["already_finished"] is True and summary["epochs"] == 1
    after = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in run.iterdir() if f.is_file()}
    assert after == before


def test_a_run_without_out_gets_its_own_folder_and_a_failed_start_leaves_none(tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    root = make_image_folder(tmp_path / "shapes")
    cfg = tiny_cfg(tmp_path, root, epochs=1, out=None)
    first = train(cfg)
    second = train(cfg)
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if not p.is_symlink())
    assert len(runs) == 2 and all((r / "summary.json").is_file() for r in runs) and first and second
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and (tmp_path / "runs" / os.readlink(latest)).resolve() == runs[-1].resolve()
    with pytest.raises(mixerlab.DataError):
        train(tiny_cfg(tmp_path, tmp_path / "no-such-folder", epochs=1, out=None))
    assert sorted(p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()) == runs  # nothing left
    assert (tmp_path / "runs" / os.readlink(latest)).resolve() == runs[-1].resolve()


def test_a_partial_run_is_said_to_be_partial(tmp_path, caplog):
    import logging

    root = make_image_folder(tmp_path / "shapes")
    summary = train(tiny_cfg(tmp_path, root, epochs=3), stop_after_steps=2)
    assert summary["stopped"]
    with caplog.at_level(logging.WARNING):
        mixerlab.from_pretrained(tmp_path / "run")
    assert "is a run that has not finished (no best.pt)" in caplog.text and "--resume" in caplog.text


# ------------------------------------------------------------------------- selection on validation
def test_a_built_in_set_holds_out_validation_from_its_training_images(tmp_path):
    make_idx_dir(tmp_path / "mnist", n_train=200)
    whole = load_dataset("mnist", str(tmp_path), val_split=0)
    ds = load_dataset("mnist", str(tmp_path), val_split=0.25, seed=3)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (150, 50, 32)
    assert torch.equal(ds.test.images, whole.test.images)  # the test images are untouched
    # val and train are a partition of the original training images: nothing seen twice, nothing lost
    def rows(split):
        return {bytes(x.numpy().tobytes()) + bytes([int(y)]) for x, y in zip(split.images, split.labels)}
    assert rows(ds.train) | rows(ds.val) == rows(whole.train) and not rows(ds.train) & rows(ds.val)
    again = load_dataset("mnist", str(tmp_path), val_split=0.25, seed=3)
    assert torch.equal(again.val.images, ds.val.images)  # the same draw for the same seed
    with pytest.raises(mixerlab.ConfigError, match="val_split"):
        resolve("auto", data="mnist", val_split=1.0)


def test_best_pt_is_chosen_on_validation_and_test_is_only_scored(tmp_path):
    make_idx_dir(tmp_path / "mnist", n_train=96)
    summary = train(tiny_cfg(tmp_path, "mnist", data_dir=str(tmp_path), epochs=3, val_split=0.25))
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("val_top1" in r and "test_top1" not in r for r in rows)  # epochs never see the test images
    best = max(range(3), key=lambda i: (rows[i]["val_top1"], -i))  # the first of the best epochs
    assert summary["selected_on"] == "val" and summary["best_epoch"] == best + 1
    assert summary["val_top1"] == rows[best]["val_top1"]
    # the test figure is best.pt's, scored once at the end
    res = evaluate(mixerlab.from_pretrained(run), load_dataset("mnist", str(tmp_path)).test, 10, batch_size=16)
    assert summary["test_top1"] == pytest.approx(res["top1"])
    final = json.loads((run / "final_eval.json").read_text())
    assert final["split"] == "test" and final["model"] == f"best.pt (epoch {best + 1})"
    assert "test top-1" in (run / "report.md").read_text()


def test_val_split_0_keeps_the_last_epoch_and_scores_test(tmp_path):
    make_idx_dir(tmp_path / "mnist", n_train=64)
    summary = train(tiny_cfg(tmp_path, "mnist", data_dir=str(tmp_path), epochs=2, val_split=0))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("test_top1" in r and "val_top1" not in r for r in rows)
    assert summary["selected_on"] == "last epoch" and summary["best_epoch"] == 2 and "val_top1" not in summary
    assert summary["test_top1"] == pytest.approx(rows[-1]["test_top1"])
    assert "nothing was chosen" in (tmp_path / "run" / "report.md").read_text()


def test_a_single_folder_with_val_split_0_is_all_training_data_and_a_run_on_it_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "flat", n=6, split=False)
    ds = load_dataset(str(root), val_split=0)
    assert len(ds.train) == 18 and ds.val is None
    with pytest.raises(TrainingError, match="--val-split 0 leaves no images to score the epochs on"):
        train(tiny_cfg(tmp_path, root, val_split=0))
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing


def test_a_folder_with_train_and_test_holds_out_validation_and_only_scores_test(tmp_path):
    import shutil

    root = make_image_folder(tmp_path / "tt", n=12)  # train/ 36 images, val/ 18
    (root / "val").rename(root / "test")
    ds = load_dataset(str(root), val_split=0.25)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (27, 9, 18)  # val from train/, test/ untouched

    def rows(split):
        return {bytes(x.numpy().tobytes()) + bytes([int(y)]) for x, y in zip(split.images, split.labels)}

    assert not (rows(ds.train) | rows(ds.val)) & rows(ds.test) and not rows(ds.train) & rows(ds.val)
    summary = train(tiny_cfg(tmp_path, root, epochs=2, val_split=0.25))
    run = tmp_path / "run"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("val_top1" in r and "test_top1" not in r for r in epochs)  # test/ never chose anything
    assert summary["selected_on"] == "val" and "test_top1" in summary
    assert json.loads((run / "final_eval.json").read_text())["split"] == "test"
    # --val-split 0: everything in train/ trains, the last epoch is kept, test/ is the curve
    ds = load_dataset(str(root), val_split=0)
    assert ds.val is None and len(ds.train) == 36 and len(ds.test) == 18
    # with val/ as well, val/ chooses and test/ is scored
    three = make_image_folder(tmp_path / "three", n=12)
    shutil.copytree(three / "val", three / "test")
    ds = load_dataset(str(three))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (36, 18, 18)
    with pytest.raises(mixerlab.DataError, match="train/ and test/ but no val/ folder; pass --val-split"):
        load_dataset(str(root), val_split=1.5)
    (root / "test" / "stripe").rename(root / "test" / "zigzag")
    with pytest.raises(mixerlab.DataError, match="train and test have different classes.*stripe.*zigzag"):
        load_dataset(str(root))

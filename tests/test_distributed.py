"""DistributedDataParallel on CPU (gloo), 2 processes: the same step as one process, and real runs."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mixerlab
from mixerlab.training.config import TrainConfig
from mixerlab.training.optim import build_optimizer
from mixerlab.training.step import train_step
from tests.test_train import TINY, make_image_folder

B = 8


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 255, (B, 1, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (B,),
                                                                                              generator=g)


def _cfg():  # no dropout, no mixup, no smoothing randomness
    return TrainConfig(label_smoothing=0.1, mixup=0.0, clip_grad=1.0, weight_decay=0.05, optimizer="adamw", lr=1e-3)


def _model():
    torch.manual_seed(0)
    return mixerlab.create_model("mixer_nano", init="timm", **TINY)


def _optimizer(model, name):
    return build_optimizer(model, name, lr=1e-3, weight_decay=0.05)


def _worker(rank: int, world: int, port: int, out: str, name: str = "adamw"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = _optimizer(model, name)
    x, y = _batch()
    # the DistributedSampler's split: rank r takes every world-th sample
    for _ in range(2):
        train_step(ddp, [(x[rank::world], y[rank::world])], opt, _cfg(), 10, torch.device("cpu"), "fp32")
    if rank == 0:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ["adamw", "muon"])  # muon: each process orthogonalises its share
def test_two_processes_at_half_batch_equal_one_process(tmp_path, name):
    out = str(tmp_path / "ddp.pt")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, out, name), nprocs=2, join=True)
    model = _model()
    opt = _optimizer(model, name)
    x, y = _batch()
    for _ in range(2):
        train_step(model, [(x, y)], opt, _cfg(), 10, torch.device("cpu"), "fp32")
    ddp = torch.load(out, weights_only=True)
    changed = 0
    for k, v in model.state_dict().items():
        # The all-reduce sums in another order than one big batch; by the second step AdamW's
        # normalisation (and Muon's bf16 Newton-Schulz) turn those last bits into up to ~2e-6, against
        # a step of lr = 1e-3.
        torch.testing.assert_close(ddp[k], v, rtol=0, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
        changed += not torch.equal(v, _model().state_dict()[k])
    assert changed > 20  # every block's matrices moved, not only the head


def launch_failure(r) -> str:
    """What a failed launch printed: each process's own error comes before torchrun's long report."""
    return r.stderr if len(r.stderr) < 5000 else r.stderr[:2500] + "\n[...]\n" + r.stderr[-2500:]


def _torchrun(args, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mixerlab", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


# muon: its sharded state is gathered to save; adamw's plain DDP runs in the --processes test below
@pytest.mark.parametrize("optimizer", ["muon"])
def test_torchrun_two_processes_writes_one_summary_and_resumes(tmp_path, optimizer):
    root = make_image_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    args = ["--data", str(root), "--model", "mixer_nano", "--batch-size", "4", "--epochs", "1", "--precision",
            "fp32", "--quiet", "--optimizer", optimizer, "--out", str(run)]
    args += sum((["--model-arg", f"{k}={v}"] for k, v in TINY.items()), [])
    r = _torchrun(args)
    assert r.returncode == 0, launch_failure(r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    assert json.loads((run / "config.json").read_text())["global_batch"] == 8
    assert len(list(tmp_path.rglob("summary.json"))) == 1
    r = _torchrun(["--resume", str(run), "--epochs", "2", "--quiet"])
    assert r.returncode == 0, launch_failure(r)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in rows] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    if optimizer == "muon":  # the checkpoint holds the momentum of every matrix, not one rank's share
        state = torch.load(run / "last.pt", weights_only=True)["optimizer"]["muon"]["state"]
        assert len(state) == 4 * TINY["depth"]
        # ... so one process, with torch's unsharded Muon, can take the run over
        r = subprocess.run([sys.executable, "-m", "mixerlab", "train", "--resume", str(run), "--epochs", "3",
                            "--quiet"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, launch_failure(r)
        assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_processes_flag_trains_like_torchrun_and_ctrl_c_ends_with_one_line(tmp_path):
    """`mixerlab train --processes 2`: Ctrl-C (SIGINT to the terminal's process group) stops both
    workers after a step with a checkpoint, no traceback, and the last line says how to continue."""
    import signal
    import time

    root = make_image_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    args = ["--data", str(root), "--model", "mixer_nano", "--batch-size", "2", "--epochs", "2", "--precision",
            "fp32", "--quiet", "--optimizer", "adamw", "--out", str(run)]
    args += sum((["--model-arg", f"{k}={v}"] for k, v in TINY.items()), [])
    cmd = [sys.executable, "-m", "mixerlab", "train", "--processes", "2", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (run / "config.json").is_file() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group gets it
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert out.strip().splitlines()[-1] == f"stopped; resume with: mixerlab train --processes 2 --resume {run}"
    assert "Traceback" not in err and err.count("stopping after this step") == 1
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and not (run / "summary.json").exists()
    r = subprocess.run([sys.executable, "-m", "mixerlab", "train", "--processes", "2", "--resume", str(run)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, launch_failure(r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in rows] == [1, 2]


def test_a_time_budget_under_torchrun_is_one_length_for_every_process(tmp_path):
    """Each process measures the step with the sharded Muon; they agree on one number of steps (the
    run ends, rather than one process waiting for the other's extra step) and write it once."""
    root = make_image_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    args = ["--data", str(root), "--model", "mixer_nano", "--batch-size", "4", "--epochs", "2", "--time-budget",
            "1000", "--precision", "fp32", "--quiet", "--optimizer", "muon", "--out", str(run)]
    args += sum((["--model-arg", f"{k}={v}"] for k, v in TINY.items()), [])
    r = _torchrun(args)
    assert r.returncode == 0, launch_failure(r)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["max_steps"] == 2 * (36 // 8) and cfg["global_batch"] == 8
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [4, 8]

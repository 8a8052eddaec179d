"""Threads chosen from the cores this process may use, --threads on every command, and the warnings
when other work is on the cores."""

import os
import subprocess
import sys

import pytest
import torch

from mixerlab.cli import COMMANDS, build_parser
from mixerlab.perf import threads


def test_usable_cores_follow_the_affinity_not_the_host():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from mixerlab.perf.threads import configure, usable_cores; import torch; "
            "print(usable_cores(), configure(), torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["1", "1", "1"]


def test_a_cgroup_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads.usable_cores() == 1


def test_every_command_takes_threads():
    parser = build_parser()
    for name, *_ in COMMANDS:
        extra = {"info": [], "serve": ["x"], "train": [], "data": ["pack", "a", "b"], "bench": [],
                 "viz": ["x"], "predict": ["x", "y"], "export": ["x", "y.onnx"], "eval": ["x"],
                 "convert": ["x", "y", "--format", "timm"], "fewshot": ["x"], "embed": ["x", "--out", "o"],
                 "push": ["x", "me/model"]}[name]
        argv = [name, "--threads", "3", *extra] if name == "data" else [name, *extra, "--threads", "3"]
        assert parser.parse_args(argv).threads == 3


def test_the_flag_sets_torch_threads(tmp_path, capsys):
    import mixerlab
    from mixerlab.cli import main

    before = torch.get_num_threads()
    mixerlab.create_model("mixer_pico", num_classes=3, img_size=16).save_pretrained(tmp_path / "m")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    try:
        assert main(["predict", str(tmp_path / "m"), str(tmp_path / "x.png"), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_busy_machine_is_named(monkeypatch):
    monkeypatch.setattr(threads, "load_average", lambda: 9.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    msg = threads.busy_warning(2)
    assert "load average 9.0 on 2 usable core(s)" in msg and "--threads 1" in msg
    monkeypatch.setattr(threads, "load_average", lambda: 1.0)
    assert threads.busy_warning(2) is None


def test_steps_that_collapse_are_warned_of_once():
    watch = threads.StepWatch(first=5, factor=4.0)
    assert all(watch.observe(0.1, 2) is None for _ in range(8))
    msgs = [watch.observe(s, 2) for s in (0.5, 0.6, 0.7, 0.8, 0.9)]
    said = [m for m in msgs if m]
    assert len(said) == 1 and "take 5.0x their first measurement" in said[0] and "2 thread(s)" in said[0]


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_thread_counts_are_refused(value, capsys):
    from mixerlab.cli import main

    with pytest.raises(SystemExit):
        main(["info", "--threads", value])
    assert "--threads" in capsys.readouterr().err

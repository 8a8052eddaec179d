"""`--precision auto` on a CPU: bf16 only where the CPU computes it natively and faster than fp32."""

import logging

import pytest
import torch

from mixerlab.perf import gemm, runtime


@pytest.fixture
def cpu(monkeypatch):
    """A CPU with native bf16 whose products take the given seconds per dtype."""
    def make(fp32: float, bf16: float, native: bool = True):
        runtime.bf16_pays_on_cpu.cache_clear()
        monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
        monkeypatch.setattr(gemm, "mm_seconds",
                            lambda m, k, n, dtype, device: fp32 if dtype == torch.float32 else bf16)
        return torch.device("cpu")

    yield make
    runtime.bf16_pays_on_cpu.cache_clear()


@pytest.mark.parametrize("fp32, bf16, picked", [
    (5.0, 0.6, "bf16"),   # AMX tiles
    (5.0, 2.7, "bf16"),   # AMD's AVX512-BF16
    (5.0, 9.5, "fp32"),   # a Xeon with AVX512-BF16 but no AMX: half the fp32 rate
    (5.0, 4.6, "fp32"),   # a near tie: fp32's precision is worth more
])
def test_auto_takes_bf16_only_where_it_is_faster(cpu, caplog, fp32, bf16, picked):
    caplog.set_level(logging.INFO, logger="mixerlab.perf.runtime")
    assert runtime.pick_precision("auto", cpu(fp32, bf16)) == picked
    said = "precision auto: fp32, since this CPU runs bf16 products no faster" in caplog.text
    assert said is (picked == "fp32")


def test_without_native_bf16_nothing_is_measured(cpu, monkeypatch):
    device = cpu(5.0, 0.1, native=False)
    monkeypatch.setattr(gemm, "mm_seconds", lambda *a, **k: pytest.fail("measured without native bf16"))
    assert runtime.pick_precision("auto", device) == "fp32"


def test_a_precision_given_is_kept_and_a_bad_one_named(cpu):
    device = cpu(5.0, 9.5)
    assert runtime.pick_precision("bf16", device) == "bf16"
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16"):
        runtime.pick_precision("fp8", device)


def test_processes_that_measured_differently_all_train_in_fp32(tmp_path, monkeypatch):
    """Under DDP each process measures bf16 by itself; where one found it no faster, all take fp32
    (a near tie can fall either way), so every process trains the same model the same way."""
    from mixerlab.training import distributed as dist_utils
    from mixerlab.training import loop

    from .test_train import make_image_folder, tiny_cfg

    root = make_image_folder(tmp_path / "shapes")
    monkeypatch.setattr(loop, "pick_precision", lambda precision, device: "bf16")
    asked = []

    def another_rank_found_fp32(flag, device):
        asked.append(flag)
        return True

    monkeypatch.setattr(dist_utils, "any_rank", another_rank_found_fp32)
    cfg = tiny_cfg(tmp_path, root, precision="auto")
    run = loop.Run(cfg, tmp_path / "run", dist_utils.setup(cfg.device))
    assert run.precision == "fp32" and asked[0] is False  # this process itself had found bf16 faster
    monkeypatch.setattr(dist_utils, "any_rank", lambda flag, device: flag)
    assert loop.Run(cfg, tmp_path / "run2", dist_utils.setup(cfg.device)).precision == "bf16"

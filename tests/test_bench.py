"""Benchmarks and the inference path: they run, write valid output, and match eager numerically.
No timings are asserted here; the numbers live in docs/benchmarks.md."""

import json

import torch

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.perf.bench import loglog_slope
from mixerlab.perf.inference import optimize_for_inference


def test_bench_cli_on_tiny_models_writes_valid_json(tmp_path):
    out = tmp_path / "bench"
    assert cli(["bench", "--models", "mixer_nano", "vit_nano", "--batch", "4", "--resolutions", "28", "56",
                "--scale-models", "mixer_nano", "vit_nano", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads((out / "bench.json").read_text())
    assert {r["model"] for r in res["inference"]} == {"mixer_nano", "vit_nano"}
    assert all(r["img_s"] > 0 and r["img_s_core"] > 0 for r in res["inference"])
    assert [r["patches"] for r in res["scaling"] if r["model"] == "mixer_nano"] == [49, 196]
    assert set(res["loglog_slope"]) == {"mixer_nano", "vit_nano"}
    assert (out / "bench.md").read_text().startswith("Machine:") and (out / "bench.png").is_file()


def test_loglog_slope():
    assert abs(loglog_slope([1, 4, 16], [2.0, 8.0, 32.0]) - 1.0) < 1e-12
    assert abs(loglog_slope([1, 4, 16], [1.0, 16.0, 256.0]) - 2.0) < 1e-12


def _reference():
    torch.manual_seed(0)
    model = mixerlab.create_model("mixer_nano", in_chans=3, img_size=32, num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, torch.randn(64, 3, 32, 32)


def test_optimize_fp32_matches_eager_eager_path():
    model, x = _reference()
    fast = optimize_for_inference(model, torch.float32, compile=False)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_optimize_fp32_compiled_matches_eager():
    model, x = _reference()
    fast = optimize_for_inference(model, torch.float32, compile=True, example=x)
    assert fast.compile_time_s >= 0
    # The compiled forward was timed against eager and one of them kept, saying which.
    assert sum("torch.compile" in m for m in fast.optimizations) == 1
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_optimize_bf16_agrees_on_top1():
    model, x = _reference()
    fast = optimize_for_inference(model, torch.bfloat16, compile=False)
    with torch.no_grad():
        agree = (fast(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree >= 0.99
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched

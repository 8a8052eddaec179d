"""OpenVINO: `mixerlab export OUT.xml` (fp32 and NNCF int8) with its metadata, checked against PyTorch;
eval, predict and serve on the IR; every bad IR one message. (OpenVINO as a candidate of
optimize_for_inference and as a runtime of `mixerlab bench` is tested in test_bench.py.)"""

import json

import pytest
import torch

import mixerlab
from mixerlab.cli import main as cli

from .test_export import trained  # noqa: F401 - the module's trained run, as a fixture here too

ov = pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ir(trained, tmp_path_factory):  # noqa: F811
    run, root = trained
    out = tmp_path_factory.mktemp("ir") / "m.xml"
    assert cli(["export", str(run), str(out)]) == 0
    return out


def test_an_ir_carries_the_metadata_and_gives_pytorchs_logits(trained, ir, capsys):  # noqa: F811
    run, _ = trained
    assert ir.is_file() and ir.with_suffix(".bin").is_file()
    assert not [p for p in ir.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    from mixerlab.export.openvino import read_ir

    _, meta = read_ir(ir)
    model = mixerlab.from_pretrained(run).eval()
    assert meta["class_names"] == model.class_names and meta["source"] == str(run)
    assert meta["mixerlab_config"] == json.loads(json.dumps(model.config.to_dict()))
    assert meta["preprocess"]["mean"] == list(model.config.mean)
    # the weights are kept in fp32 (OpenVINO's own default would halve them)
    params = sum(p.numel() for p in model.parameters())
    assert ir.with_suffix(".bin").stat().st_size >= 4 * params
    loaded = mixerlab.load_exported(ir)
    assert loaded.backend == "openvino" and loaded.class_names == model.class_names
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    assert loaded(x[:1]).shape == (1, 3)  # the batch axis stays dynamic


def test_eval_predict_and_serve_take_an_ir(trained, ir, tmp_path, capsys):  # noqa: F811
    run, root = trained
    assert cli(["eval", str(run), "--data", str(root), "--out", str(tmp_path / "pt")]) == 0
    assert cli(["eval", str(ir), "--data", str(root), "--out", str(tmp_path / "ov")]) == 0
    a, b = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("pt", "ov"))
    assert a["top1"] == b["top1"] and a["confusion"] == b["confusion"] and abs(a["loss"] - b["loss"]) < 1e-4
    # --precision bf16 runs the IR with OpenVINO's bf16 hint, as PyTorch runs under bf16 autocast
    from argparse import Namespace

    from mixerlab.cli.common import load_for_inference

    assert load_for_inference(str(ir), Namespace(precision="bf16")).precision == "bf16"
    assert load_for_inference(str(ir), Namespace(precision="fp32")).precision == "f32"
    assert cli(["eval", str(ir), "--data", str(root), "--precision", "bf16", "--out", str(tmp_path / "ov16")]) == 0
    c = json.loads((tmp_path / "ov16" / "eval.json").read_text())
    assert abs(c["top1"] - b["top1"]) <= 0.05 and abs(c["loss"] - b["loss"]) < 0.05
    capsys.readouterr()
    files = [str(root / "val" / "square" / "0.png"), str(root / "val" / "stripe" / "1.png")]
    cli(["predict", str(run), *files, "--json"])
    pt = json.loads(capsys.readouterr().out)
    cli(["predict", str(ir), *files, "--json"])
    got = json.loads(capsys.readouterr().out)
    for p, o in zip(pt, got):
        assert [t["class"] for t in p["top"]] == [t["class"] for t in o["top"]]
        assert max(abs(s["prob"] - t["prob"]) for s, t in zip(p["top"], o["top"])) < 1e-4
    from fastapi.testclient import TestClient

    from mixerlab.serve.app import create_app

    with TestClient(create_app(str(ir)), base_url="http://localhost") as client:
        info = client.get("/v1/model").json()
        assert info["backend"] == "openvino" and info["classes"] == ["circle", "square", "stripe"]
        r = client.post("/v1/predict", content=open(files[0], "rb").read())
        assert r.status_code == 200, r.text
        assert [t["class"] for t in r.json()["top"]] == [t["class"] for t in pt[0]["top"]]


def test_int8_ir_is_calibrated_and_keeps_the_answers(trained, tmp_path, capsys):  # noqa: F811
    run, root = trained
    out = tmp_path / "q.xml"
    assert cli(["export", str(run), str(out), "--int8", "--data", str(root), "--calibration-images", "24"]) == 0
    said = capsys.readouterr().out
    assert "int8-static" in said and "the fp32 graph before int8" in said
    from mixerlab.export.openvino import read_ir

    ov_model, meta = read_ir(out)
    assert meta["quantization"].startswith("int8 static (NNCF")
    assert any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())
    assert cli(["eval", str(run), "--data", str(root), "--out", str(tmp_path / "pt")]) == 0
    assert cli(["eval", str(out), "--data", str(root), "--out", str(tmp_path / "q")]) == 0
    a, b = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("pt", "q"))
    assert abs(a["top1"] - b["top1"]) <= 1 / 18 + 1e-9  # at most one of the 18 val images changes its answer
    # one weight scale a tensor: said in the metadata, every weight's scale a single number, answers kept
    tensor = tmp_path / "qt.xml"
    assert cli(["export", str(run), str(tensor), "--int8", "--int8-weights", "per-tensor", "--data", str(root),
                "--calibration-images", "24"]) == 0
    ov_t, meta_t = read_ir(tensor)
    assert meta_t["quantization"] == "int8 static (NNCF post-training, calibrated; per-tensor weights)"

    def weight_scales(m):  # the shape of each int8 weight's dequantisation scale: int8 Constant -> Convert -> Multiply
        shapes = []
        for op in m.get_ops():
            if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == "i8":
                convert = next(iter(op.output(0).get_target_inputs())).get_node()
                multiply = next(iter(convert.output(0).get_target_inputs())).get_node()
                assert multiply.get_type_name() == "Multiply"
                shapes.append(list(multiply.input_value(1).get_partial_shape().to_shape()))
        return shapes

    per_row, per_tensor = weight_scales(ov_model), weight_scales(ov_t)
    assert per_row and any(sum(d > 1 for d in shape) for shape in per_row)  # the default: a scale per row
    assert per_tensor and all(all(d == 1 for d in shape) for shape in per_tensor)
    assert cli(["eval", str(tensor), "--data", str(root), "--out", str(tmp_path / "qt")]) == 0
    c = json.loads((tmp_path / "qt" / "eval.json").read_text())
    assert abs(a["top1"] - c["top1"]) <= 1 / 18 + 1e-9


@pytest.mark.parametrize("argv,message", [
    (["--int8", "dynamic"], "--int8 dynamic is ONNX Runtime's; OpenVINO's int8 (NNCF) is static"),
    (["--int8"], "--int8 needs calibration images: pass --data"),
    (["--int8-weights", "per-tensor"],
     "--int8-weights per-tensor is for OpenVINO int8 exports: write OUT.xml with --int8"),
])
def test_int8_ir_options_are_checked_first(trained, tmp_path, capsys, argv, message):  # noqa: F811
    run, _ = trained
    assert cli(["export", str(run), str(tmp_path / "m.xml"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        cli(["export", str(run), str(tmp_path / "m.xml"), "--int8", "weekly"])
    assert "argument --int8: invalid choice: 'weekly' (choose from 'dynamic', 'static')" in capsys.readouterr().err


def test_an_existing_pair_is_kept_unless_overwrite(trained, ir, tmp_path, capsys):  # noqa: F811
    run, _ = trained
    (tmp_path / "m.bin").write_bytes(b"mine")
    assert cli(["export", str(run), str(tmp_path / "m.xml")]) == 2
    assert "m.bin exists already; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "m.bin").read_bytes() == b"mine"
    assert cli(["export", str(run), str(tmp_path / "m.xml"), "--overwrite"]) == 0
    assert (tmp_path / "m.bin").stat().st_size > 4


def _copy_ir(ir, dst, config=None, **rt):
    """The IR saved again with some metadata replaced (`config`: keys of mixerlab_config)."""
    m = ov.Core().read_model(str(ir))
    if config:
        cfg = json.loads(m.get_rt_info(["mixerlab", "mixerlab_config"]).astype(str))
        rt["mixerlab_config"] = json.dumps({**cfg, **config})
    for k, v in rt.items():
        m.set_rt_info(v, ["mixerlab", k])
    ov.save_model(m, str(dst), compress_to_fp16=False)
    return dst


@pytest.mark.parametrize("damage,message", [
    (lambda ir, d: _copy_ir(ir, d / "bad.xml", class_names='["a", "b"]'), "lists 2 names for a model of 3 classes"),
    (lambda ir, d: _copy_ir(ir, d / "bad.xml", class_names="[not json"),
     "metadata key 'class_names' is not valid JSON"),
    (lambda ir, d: _copy_ir(ir, d / "bad.xml", config={"depth": -3}),
     "metadata key 'mixerlab_config' is not a valid model config"),
    (lambda ir, d: _copy_ir(ir, d / "bad.xml", config={"img_size": [32, 32]}),
     "the metadata says input [3, 32, 32] (in_chans, height, width), the graph takes"),
    (lambda ir, d: ((d / "bad.xml").write_text("<net>not an ir"), (d / "bad.bin").write_bytes(b"")),
     "OpenVINO cannot read this IR"),
    (lambda ir, d: ((d / "bad.xml").write_bytes(ir.read_bytes()), (d / "bad.bin").write_bytes(b"\0" * 64)),
     "OpenVINO cannot read this IR"),
    (lambda ir, d: (d / "bad.xml").write_bytes(ir.read_bytes()), "its weights file bad.bin is missing"),
    (lambda ir, d: ((d / "bad.xml").write_text(ir.read_text().replace("<mixerlab>", "<other>")
                                               .replace("</mixerlab>", "</other>")),
                    (d / "bad.bin").write_bytes(ir.with_suffix(".bin").read_bytes())),
     "an exported file without mixerlab metadata"),
])
def test_a_bad_ir_is_one_message(trained, ir, tmp_path, capsys, damage, message):  # noqa: F811
    _, root = trained
    damage(ir, tmp_path)
    capsys.readouterr()
    assert cli(["predict", str(tmp_path / "bad.xml"), str(root / "val" / "square" / "0.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.xml" in err and "Traceback" not in err


def test_a_missing_openvino_is_named(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    import sys

    run, _ = trained
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    assert cli(["export", str(run), str(tmp_path / "m.xml")]) == 2
    assert "pip install 'mixerlab[openvino]'" in capsys.readouterr().err
    assert not any(p.suffix == ".bin" for p in tmp_path.iterdir())

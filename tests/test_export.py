"""`mixerlab export`: ONNX (fp32, int8) and AOTInductor files from a training run, an official npz and a
timm checkpoint, each checked against PyTorch; eval and predict on the exported files; clear errors."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

import mixerlab
from mixerlab.cli import main as cli

from .conftest import load_case
from .test_train import make_image_folder, tiny_cfg

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mixerlab.training.loop import train

    tmp = tmp_path_factory.mktemp("run")
    root = make_image_folder(tmp / "shapes")
    train(tiny_cfg(tmp, root, epochs=3))
    return tmp / "run", root


def ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_a_training_run_exports_to_onnx_with_its_metadata(trained, tmp_path, capsys, caplog):
    run, _ = trained
    out = tmp_path / "model.onnx"
    with caplog.at_level(logging.INFO):
        assert cli(["export", str(run), str(out)]) == 0
    # the exporter's own passes log a line per rewritten node; a user sees mixerlab's lines only
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("onnxscript", "onnx_ir")]
    printed = capsys.readouterr().out
    assert "max abs logit difference against PyTorch on a batch of 7" in printed
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == ["circle", "square", "stripe"]
    pre = json.loads(meta["preprocess"])
    assert pre["mean"] == [0.5] and pre["input_size"] == [3, 16, 16] and meta["source"] == str(run)
    assert json.loads(meta["mixerlab_config"])["arch"] == "mixer"
    ops = {n.op_type for n in proto.graph.node}
    assert "LayerNormalization" in ops and "Gelu" in ops  # one node each, not decomposed
    model = mixerlab.from_pretrained(run).eval()
    for batch in (1, 3, 7):  # a dynamic batch axis
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            np.testing.assert_allclose(ort_logits(out, x), model(x).numpy(), atol=1e-4, rtol=0)
    with pytest.raises(Exception, match="(?i)dim|shape|dimension"):
        ort_logits(out, torch.randn(1, 3, 32, 32))  # height and width are fixed by the token mixing


def test_an_official_npz_exports_and_matches_the_official_logits(official_dir, tmp_path):
    npz, x, ref = load_case(official_dir, "tiny_p4")
    out = tmp_path / "official.onnx"
    assert cli(["export", str(npz), str(out)]) == 0
    got = ort_logits(out, x)
    assert np.abs(got - ref).max() <= 1e-4
    gelu = [n for n in onnx.load(str(out)).graph.node if n.op_type == "Gelu"]
    assert gelu and all(a.s == b"tanh" for n in gelu for a in n.attribute if a.name == "approximate")


def test_a_timm_checkpoint_and_a_vit_export(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("mixer_s16_224", pretrained=False, img_size=64, num_classes=4).eval()
    torch.nn.init.normal_(ref.head.weight, std=0.1)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    assert cli(["export", str(tmp_path / "timm.pth"), str(tmp_path / "timm.onnx")]) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(ort_logits(tmp_path / "timm.onnx", x), ref(x).numpy(), atol=1e-4, rtol=0)
    vit = mixerlab.create_model("vit_nano", num_classes=3)
    vit.save_pretrained(tmp_path / "vit")
    assert cli(["export", str(tmp_path / "vit"), str(tmp_path / "vit.onnx")]) == 0


def test_int8_keeps_the_metadata_and_stays_close(trained, tmp_path):
    run, root = trained
    assert cli(["export", str(run), str(tmp_path / "int8.onnx"), "--int8"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "int8.onnx")).metadata_props}
    assert meta["quantization"] == "int8 dynamic (MatMul, Gemm)" and "class_names" in meta
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger"}
    assert cli(["export", str(run), str(tmp_path / "static.onnx"), "--int8", "static", "--data", str(root),
                "--calibration-images", "32"]) == 0
    model = mixerlab.from_pretrained(run).eval()
    x = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    for name in ("int8.onnx", "static.onnx"):
        got = ort_logits(tmp_path / name, x)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.7 and np.abs(got - ref).max() < 0.5


def test_eval_and_predict_take_an_exported_file(trained, tmp_path, capsys):
    run, root = trained
    assert cli(["export", str(run), str(tmp_path / "m.onnx")]) == 0
    assert cli(["eval", str(run), "--data", str(root), "--out", str(tmp_path / "pt")]) == 0
    assert cli(["eval", str(tmp_path / "m.onnx"), "--data", str(root), "--out", str(tmp_path / "ox")]) == 0
    a, b = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("pt", "ox"))
    assert a["top1"] == b["top1"] and a["confusion"] == b["confusion"] and set(a) == set(b) - set() | {"source"}
    assert abs(a["loss"] - b["loss"]) < 1e-4
    capsys.readouterr()
    files = [str(root / "val" / "square" / "0.png"), str(root / "val" / "stripe" / "1.png")]
    cli(["predict", str(run), *files, "--json"])
    pt = json.loads(capsys.readouterr().out)
    cli(["predict", str(tmp_path / "m.onnx"), *files, "--json"])
    ox = json.loads(capsys.readouterr().out)
    for p, o in zip(pt, ox):
        assert [t["class"] for t in p["top"]] == [t["class"] for t in o["top"]]
        assert max(abs(s["prob"] - t["prob"]) for s, t in zip(p["top"], o["top"])) < 1e-4


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="no C++ compiler")
def test_an_aot_compiled_package_runs_without_the_model_code(trained, tmp_path, capsys):
    run, root = trained
    out = tmp_path / "model.pt2"
    assert cli(["export", str(run), str(out)]) == 0
    assert "max abs logit difference" in capsys.readouterr().out
    runner = torch._inductor.aoti_load_package(str(out))  # no mixerlab, no model class
    model = mixerlab.from_pretrained(run).eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=0)
    capsys.readouterr()
    assert cli(["eval", str(out), "--data", str(root), "--out", str(tmp_path / "ev")]) == 2  # runs code: opt-in
    assert "native code that runs as soon as it is loaded" in capsys.readouterr().err
    assert cli(["eval", str(out), "--data", str(root), "--out", str(tmp_path / "ev"), "--trust-compiled"]) == 0


@pytest.mark.parametrize("out,message", [
    ("model.txt", "an OpenVINO one to a .xml file and a compiled one to a .pt2 file"),
    ("folder.onnx/", "is a folder"),
])
def test_a_wrong_output_path_is_refused(trained, tmp_path, capsys, out, message):
    run, _ = trained
    target = tmp_path / out
    if out.endswith("/"):
        target.mkdir()
    assert cli(["export", str(run), str(target)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "model.txt").exists()


def test_an_op_the_exporter_cannot_handle_leaves_no_file(trained, tmp_path, capsys, monkeypatch):
    run, _ = trained

    def refuse(*a, **kw):
        raise RuntimeError("Unsupported operator: aten::frobnicate\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    assert cli(["export", str(run), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "torch.onnx cannot export this model (RuntimeError: Unsupported operator: aten::frobnicate)" in err
    assert list(tmp_path.iterdir()) == []


def test_int8_is_for_onnx_and_a_missing_extra_is_named(trained, tmp_path, capsys, monkeypatch):
    run, _ = trained
    assert cli(["export", str(run), str(tmp_path / "m.pt2"), "--int8"]) == 2
    assert "--int8 is for ONNX and OpenVINO exports" in capsys.readouterr().err
    assert cli(["export", str(run), str(tmp_path / "m.onnx"), "--int8", "static"]) == 2
    assert "--int8 static needs calibration images: pass --data" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *a, **kw):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    import importlib

    monkeypatch.setattr(importlib, "import_module",
                        lambda n, *a: no_onnx(n) if n == "onnxscript" else real_import(n, fromlist=["_"]))
    assert cli(["export", str(run), str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'mixerlab[export]'" in capsys.readouterr().err


def evil_pt2(path, marker):
    """A .pt2 with mixerlab's metadata and a shared library whose constructor writes `marker`."""
    import subprocess
    import zipfile

    src = path.with_suffix(".c")
    src.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) {{ '
                   f'FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }} }}\n')
    so = path.with_suffix(".so")
    built = subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src)], capture_output=True).returncode == 0
    cfg = mixerlab.get_config("mixer_pico", num_classes=3, img_size=16).to_dict()
    meta = {"class_names": json.dumps(["a", "b", "c"]), "preprocess": json.dumps({}),
            "mixerlab_config": json.dumps(cfg)}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/mixerlab/metadata.json", json.dumps(meta))
        z.writestr("model/data/aotinductor/model/model.wrapper.so", so.read_bytes() if built else b"\x7fELF")
    return built


def test_a_pt2_is_never_loaded_unless_the_user_trusts_it(tmp_path, capsys, monkeypatch):
    from mixerlab.export.onnx import ExportError
    from mixerlab.export.runtime import load_exported

    marker = tmp_path / "ran.txt"
    evil_pt2(tmp_path / "evil.pt2", marker)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(img)
    for argv in (["predict", str(tmp_path / "evil.pt2"), str(img)],
                 ["eval", str(tmp_path / "evil.pt2"), "--data", str(tmp_path)]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert "refused to load" in err and "--trust-compiled" in err
    with pytest.raises(ExportError, match="trust_compiled=True"):
        load_exported(tmp_path / "evil.pt2")
    assert not marker.exists()  # nothing ran
    # Trusted, a package that is not a real AOTInductor one fails cleanly and leaves no temp folder.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(ExportError, match="not a loadable AOTInductor package|does not take the input"):
        load_exported(tmp_path / "evil.pt2", trust_compiled=True)
    assert list(tmp.iterdir()) == []


def _tamper(src, dst, **changes):
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    cfg = json.loads(props["mixerlab_config"])
    for k, v in changes.items():
        if k in cfg:
            cfg[k] = v
        else:
            props[k] = v
    props["mixerlab_config"] = json.dumps(cfg)
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(dst))


@pytest.mark.parametrize("change,message", [
    ({"img_size": [32, 32]}, "the metadata says input [3, 32, 32] (in_chans, height, width), the graph takes"),
    ({"in_chans": 1}, "the metadata says input [1, 16, 16]"),
    ({"num_classes": 5}, "lists 3 names for a model of 5 classes"),
    ({"class_names": "5"}, "'class_names' must be a list of strings or null, found '5'"),
    ({"class_names": '"abc"'}, "'class_names' must be a list of strings or null, found 'abc'"),
    ({"class_names": '["a", "b"]'}, "lists 2 names for a model of 3 classes"),
    ({"class_names": "[not json"}, "cannot read its metadata"),
    ({"depth": -3}, "metadata key 'mixerlab_config' is not a valid model config"),
])
def test_tampered_export_metadata_is_refused_with_its_key(trained, tmp_path, capsys, change, message):
    run, root = trained
    assert cli(["export", str(run), str(tmp_path / "m.onnx")]) == 0
    _tamper(tmp_path / "m.onnx", tmp_path / "bad.onnx", **change)
    capsys.readouterr()
    assert cli(["predict", str(tmp_path / "bad.onnx"), str(root / "val" / "square" / "0.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.onnx" in err and "Traceback" not in err

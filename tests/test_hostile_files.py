"""Files that lie about their sizes, or run code: each is refused before anything is allocated or run,
with one message naming the file and what is wrong."""

import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.errors import CheckpointError


@pytest.fixture
def saved(tmp_path):
    m = mixerlab.create_model("mixer_pico", num_classes=3, img_size=16)
    m.class_names = ["a", "b", "c"]
    m.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def write_npy_entry(z, name, shape, data=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    z.writestr(name, buf.getvalue() + data)


def test_an_npz_zip_bomb_is_refused_from_its_headers(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("stem/kernel.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (256, 1024, 1024)})
            for _ in range(64):
                f.write(bytes(1 << 24))  # 1 GiB of zeros, about 1 MB on disk
    assert path.stat().st_size < 4 << 20
    tracemalloc.start()
    with pytest.raises(CheckpointError, match=r"bomb.npz: entry 'stem/kernel.npy' inflates from .* \(over 50x\)"):
        mixerlab.from_pretrained(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20  # nothing was inflated


def test_an_npy_header_that_claims_more_than_the_archive_holds(tmp_path, capsys):
    path = tmp_path / "claim.npz"
    with zipfile.ZipFile(path, "w") as z:
        write_npy_entry(z, "stem/kernel.npy", (10**12,), bytes(64))
    assert cli(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "entry 'stem/kernel.npy' claims shape [1000000000000] (4,000,000,000,000 bytes)" in err
    assert "holds 64" in err and "Traceback" not in err


def test_npz_shapes_are_checked_against_the_config_before_any_data_is_read(tmp_path, monkeypatch):
    m = mixerlab.create_model("mixer_pico", num_classes=3, img_size=16)
    mixerlab.save_official(m, tmp_path / "ok.npz")
    with zipfile.ZipFile(tmp_path / "ok.npz") as src, zipfile.ZipFile(tmp_path / "bad.npz", "w") as dst:
        for info in src.infolist():
            if info.filename == "MixerBlock_3/channel_mixing/Dense_1/bias.npy":
                write_npy_entry(dst, info.filename, (7,), bytes(28))
            else:
                dst.writestr(info, src.read(info))
    from mixerlab.weights import npz

    reads = []
    monkeypatch.setattr(npz, "read", lambda *a: reads.append(a))
    with pytest.raises(CheckpointError, match=r"key 'MixerBlock_3/channel_mixing/Dense_1/bias' has shape \[7\], "
                                              r"expected \[128\]"):
        mixerlab.from_pretrained(tmp_path / "bad.npz")
    assert reads == []
    monkeypatch.undo()
    assert mixerlab.from_pretrained(tmp_path / "ok.npz").config.depth == m.config.depth


def test_object_arrays_in_an_npz_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("stem/kernel.npy", buf.getvalue() + b"\x80\x04N.")
    with pytest.raises(CheckpointError, match="holds object values; weights are numbers"):
        mixerlab.from_pretrained(path)


@pytest.mark.parametrize("depth", [10**9, 10**6, 7])
def test_a_config_depth_is_bounded_by_the_blocks_the_weights_hold(saved, capsys, depth):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["depth"] = depth
    (saved / "config.json").write_text(json.dumps(cfg))
    assert cli(["info", str(saved)]) == 2
    assert f"its config says depth {depth}, but the weights hold 6 blocks" in capsys.readouterr().err


def test_class_names_that_do_not_fit_the_head_are_refused(saved):
    cfg = json.loads((saved / "config.json").read_text())
    for names, msg in ((["one"], "'class_names' lists 1 name for a model of 3 classes"),
                       ("abc", "'class_names' must be a list of strings"), ([1, 2, 3], "must be a list of strings")):
        (saved / "config.json").write_text(json.dumps({**cfg, "class_names": names}))
        with pytest.raises(CheckpointError, match=msg):
            mixerlab.from_pretrained(saved)


def test_a_broken_config_json_in_a_timm_folder_is_named(tmp_path):
    from safetensors.torch import save_file

    m = mixerlab.create_model("mixer_pico", num_classes=3, img_size=16)
    folder = tmp_path / "snap"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text('{"architecture": "mixer_b16_224", ')
    with pytest.raises(CheckpointError, match=r"snap/config.json: bad JSON"):
        mixerlab.from_pretrained(folder)


def test_a_torch_checkpoint_config_that_lies_about_depth(tmp_path):
    m = mixerlab.create_model("mixer_pico", num_classes=3, img_size=16)
    cfg = {**m.config.to_dict(), "depth": 10**9}
    torch.save({"model": m.state_dict(), "config": cfg}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="says depth 1000000000, but the weights hold 6 blocks"):
        mixerlab.from_pretrained(tmp_path)


def test_outputs_under_a_file_are_one_message(saved, tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    pytest.importorskip("onnx")
    assert cli(["export", str(saved), str(tmp_path / "plain" / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'plain' / 'm.onnx'}: {tmp_path / 'plain'} is a file, not a folder" in err
    assert cli(["convert", str(saved), str(tmp_path / "plain" / "sub"), "--format", "mixerlab"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_predict_escapes_names_and_sums_up(saved, tmp_path, capsys):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (16, 16), "red").save(d / "a.png")
    Image.new("RGB", (16, 16), "blue").save(d / "evil\nfake.png: a 100.0%.png")
    (d / "broken.png").write_bytes(b"nope")
    assert cli(["predict", str(saved), str(d)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1] == "3 file(s): 2 classified, 1 unusable"
    assert any("evil\\x0afake.png" in line for line in out)
    assert not any(line.startswith("fake.png") for line in out)


def test_eval_with_a_missing_class_shows_both_lists(saved, tmp_path, capsys):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "data" / c / f"{i}.png")
    assert cli(["eval", str(saved), "--data", str(tmp_path / "data"), "--split", "train",
                "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "has 3 classes but" in err and "the model's ['a', 'b', 'c'], the data's ['a', 'b']" in err
    assert "not in the data: ['c']" in err


def test_outputs_are_never_overwritten_unasked(saved, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert cli(["convert", str(saved), str(out), "--format", "timm"]) == 0
    first = out.read_bytes()
    assert cli(["convert", str(saved), str(out), "--format", "timm"]) == 2
    assert f"{out} exists already; pass --overwrite to replace it" in capsys.readouterr().err
    assert cli(["convert", str(saved), str(out), "--format", "timm", "--overwrite"]) == 0
    assert out.read_bytes() == first


def test_a_lossy_conversion_says_what_it_drops(tmp_path, capsys):
    m = mixerlab.create_model("mixer_pico", num_classes=3, img_size=16, act="gelu", mean=(0.2,), std=(0.3,))
    torch.nn.init.normal_(m.head.weight, std=0.5)
    m.class_names = ["shirt", "shoe", "bag"]
    m.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    assert cli(["convert", str(tmp_path / "m"), str(tmp_path / "o.npz"), "--format", "official"]) == 0
    out = capsys.readouterr().out
    assert "dropped: the class names (3" in out
    assert "act 'gelu' -> 'gelu_tanh'" in out and "mean (0.2,) -> (0.5,)" in out
    assert "(the activation changed)" in out
    assert cli(["convert", str(tmp_path / "m"), str(tmp_path / "copy"), "--format", "mixerlab"]) == 0
    out = capsys.readouterr().out
    assert "nothing lost" in out and "at most 0.00e+00" in out

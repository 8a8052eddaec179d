"""Bad input, as a hostile but honest user brings it: odd images, bad options, bad files. Each case ends
in the correct result or one clear message, and nothing already done is lost."""

import errno
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.data.decode import DecodeError, decode_image, read_image
from mixerlab.data.sources import load_dataset
from mixerlab.errors import ConfigError
from mixerlab.training.config import TrainConfig
from mixerlab.training.loop import train
from mixerlab.training.recipes import resolve

from .test_train import TINY, make_image_folder, tiny_cfg


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_bomb(path, side=20000):
    """A real, valid PNG of side x side black pixels (1-bit grey, a few hundred KB on disk)."""
    row = b"\x00" + bytes((side + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
                     + png_chunk(b"IEND", b""))
    return path


def fashion_like(seed=0, size=28):
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size), np.uint8)
    a[6:22, 8:20] = rng.integers(60, 256, (16, 12))
    a[0, 0], a[-1, -1] = 0, 255  # the full 8-bit range, as the demo's test images have
    return a


# ------------------------------------------------------------------------------------- the decoder
def test_16_bit_png_keeps_its_grey_levels(tmp_path):
    a8 = fashion_like()
    Image.fromarray(a8).save(tmp_path / "8.png")
    Image.fromarray(a8.astype(np.uint16) * 257).save(tmp_path / "16.png")  # what a 16-bit camera writes
    assert Image.open(tmp_path / "16.png").mode.startswith("I;16")
    got = read_image(tmp_path / "16.png", channels=1)
    np.testing.assert_array_equal(got[0], a8)  # not cut to {0, 255}
    assert len(np.unique(got)) > 10
    # a 12-bit image in a 16-bit container is shown as a viewer shows it: on the 16-bit scale
    Image.fromarray(a8.astype(np.uint16) * 16).save(tmp_path / "12.png")
    np.testing.assert_array_equal(read_image(tmp_path / "12.png", channels=1)[0], np.rint(a8.astype(int) * 16 / 257))


def test_float_and_constant_images(tmp_path):
    f = (fashion_like().astype(np.float32) / 255.0) * 3.0 - 1.0
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif", channels=1)[0], fashion_like())  # min..max
    Image.fromarray(fashion_like().astype(np.float32) / 255.0, mode="F").save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "unit.tif", channels=1)[0], fashion_like())  # 0..1
    Image.fromarray(np.full((8, 8), 1234, np.uint16)).save(tmp_path / "flat.png")
    assert (read_image(tmp_path / "flat.png", channels=1) == 5).all()  # 1234 / 257 on the 16-bit scale
    Image.fromarray(np.full((8, 8), 7.0, np.float32), mode="F").save(tmp_path / "flat.tif")
    assert read_image(tmp_path / "flat.tif", channels=1).max() == 0  # no range at all: 0


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((4, 6), np.uint8)
    a[0, 0] = 255  # top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(a).save(tmp_path / "phone.png", exif=exif)
    out = read_image(tmp_path / "phone.png", channels=1)[0]
    assert out.shape == (6, 4) and out[0, 3] == 255  # upright: the pixel is now top-right


def test_palette_alpha_and_cmyk_follow_the_stated_rules(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", channels=3)
    assert (out[0, :2] == 200).all() and (out[:, 2:] == 0).all()  # transparent -> black
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = read_image(tmp_path / "c.jpg", channels=3)
    assert red[0].min() > 200 and red[1:].max() < 60
    grey_palette = Image.fromarray(fashion_like()).convert("P")
    grey_palette.save(tmp_path / "p.png")
    assert mixerlab.data.decode.image_info(tmp_path / "p.png")[2] == 1  # a grey palette is a grey image


@pytest.mark.parametrize("content,reason", [
    (b"", "not an image"), (b"hello, not an image", "not an image"), ("truncated", "truncated"),
])
def test_each_failure_has_one_named_reason(tmp_path, content, reason):
    path = tmp_path / "x.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(DecodeError) as e:
        decode_image(path)
    assert e.value.reason == reason and str(path) in str(e.value)
    with pytest.raises(DecodeError, match="unreadable") as e:
        decode_image(tmp_path / "missing.png")


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = make_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(DecodeError, match=r"too large \(9000x9000 = 81,000,000 pixels, the limit is 64,000,000"):
        decode_image(make_bomb(tmp_path / "big.png", side=9000))  # under Pillow's limit: ours catches it
    with pytest.raises(DecodeError, match=r"too large \(400,000,000 pixels, the limit is 64,000,000"):
        decode_image(bomb)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_give_a_decode_error_or_an_image(data):
    for prefix in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM"):
        try:
            im = decode_image(prefix + data)
        except DecodeError as e:
            assert e.reason in mixerlab.data.decode.REASONS
        else:
            assert im.mode in ("L", "RGB") and im.width * im.height > 0


# -------------------------------------------------------------------------- datasets and predict
def test_a_bomb_in_a_dataset_is_skipped_and_in_predict_fails_alone(tmp_path, caplog, capsys):
    root = make_image_folder(tmp_path / "shapes")
    make_bomb(root / "train" / "circle" / "bomb.png")
    with caplog.at_level("WARNING"):
        ds = load_dataset(str(root))
    assert len(ds.train) == 36 and "bomb.png: too large" in caplog.text
    train(tiny_cfg(tmp_path, root, epochs=1))
    good = root / "val" / "square" / "0.png"
    assert cli(["predict", str(tmp_path / "run"), str(good), str(root / "train" / "circle" / "bomb.png"),
                "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert "top" in out[0] and out[1]["reason"] == "too large" and "unreadable image: too large" in out[1]["error"]


def test_a_mixed_folder_takes_the_most_common_size_and_colour(tmp_path, caplog):
    root = tmp_path / "digits"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(fashion_like(i)).save(root / c / f"{i}.png")
    Image.fromarray(np.zeros((900, 1200, 3), np.uint8)).save(root / "a" / "zz_photo.jpg")  # last in sort order
    Image.fromarray(np.zeros((900, 1200, 3), np.uint8)).save(root / "a" / "00_photo.jpg")  # first in sort order
    with caplog.at_level("INFO"):
        ds = load_dataset(str(root), val_split=0.2)
    assert ds.img_size == (28, 28) and ds.in_chans == 1
    assert "22 images at 28x28 (the most common size), grey (the most common); 2 resized, 2 converted" in caplog.text
    ds = load_dataset(str(root), img_size=(32, 32), val_split=0.2)
    assert ds.img_size == (32, 32)


def test_16_bit_images_predict_as_their_8_bit_originals(tmp_path, capsys):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=2))
    a8 = np.asarray(Image.open(root / "val" / "stripe" / "0.png").convert("L"))
    Image.fromarray(a8).save(tmp_path / "8.png")
    Image.fromarray(a8.astype(np.uint16) * 257).save(tmp_path / "16.png")
    cli(["predict", str(tmp_path / "run"), str(tmp_path / "8.png"), str(tmp_path / "16.png"), "--json"])
    r8, r16 = json.loads(capsys.readouterr().out)
    assert r8["top"] == r16["top"]


# ------------------------------------------------------------------------------------------ eval
def test_eval_refuses_other_class_names_unless_mapped_by_index(tmp_path, capsys):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=1))
    other = make_image_folder(tmp_path / "digits", classes=("one", "two", "three"))
    assert cli(["eval", str(tmp_path / "run"), "--data", str(other), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "trained on classes ['circle', 'square', 'stripe'], but" in err and "['one', 'three', 'two']" in err
    assert "--map-by-index" in err and not (tmp_path / "ev" / "eval.json").exists()
    assert cli(["eval", str(tmp_path / "run"), "--data", str(other), "--out", str(tmp_path / "ev"),
                "--map-by-index"]) == 0


# --------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "-4"], "'batch_size': -4 is not allowed; allowed: >= 1"),
    (["--batch-size", "0"], "'batch_size': 0 is not allowed; allowed: >= 1"),
    (["--epochs", "0"], "'epochs': 0 is not allowed; allowed: >= 1"),
    (["--img-size", "0"], "'img_size': 0 is not allowed; allowed: >= 1"),
    (["--img-size", "-8"], "'img_size': -8 is not allowed; allowed: >= 1"),
    (["--model-arg", "depth=six"], "mixer model option 'depth': 'six' is not an integer"),
    (["--lr", "0"], "'lr': 0.0 is not allowed; allowed: > 0"),
])
def test_bad_training_flags_fail_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert cli(["train", "--data", str(tmp_path / "nowhere"), "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("topk", ["0", "-3", "two"])
def test_bad_topk_is_refused(tmp_path, capsys, topk):
    with pytest.raises(SystemExit) as e:
        cli(["predict", "x", "y.png", "--topk", topk])
    assert e.value.code == 2 and "--topk" in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ('flip: "no"\n', "'flip': 'no' is not true or false"),
    ("epochs: ten\n", "'epochs': 'ten' is not an integer"),
    ("epochs: 1.7\n", "'epochs': 1.7 is not an integer"),
    ("recipe: fast\n", "c.yaml: unknown recipe 'fast'"),
    ("epochs: [1\n", "c.yaml: not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping of training options"),
])
def test_bad_config_files_fail_with_one_message(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        resolve("scratch", str(tmp_path / "c.yaml"))


def test_numbers_in_yaml_are_numbers_and_booleans_are_booleans(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nflip: false\nbetas: [0.9, 0.95]\nmin_lr: 0\n")
    cfg = resolve("scratch", str(tmp_path / "c.yaml"))
    assert (cfg.lr, cfg.flip, cfg.betas, cfg.min_lr) == (0.001, False, (0.9, 0.95), 0.0)
    (tmp_path / "c.toml").write_text("flip = 'yes'\n")
    with pytest.raises(ConfigError, match="'flip': 'yes' is not true or false"):
        resolve("scratch", str(tmp_path / "c.toml"))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(f for f in TrainConfig.__dataclass_fields__ if f not in ("data", "out"))),
       st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.floats(-2, 2), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                                                st.integers())))
def test_any_option_value_is_accepted_valid_or_refused_clearly(name, value):
    try:
        cfg = TrainConfig.from_dict({name: value})
    except ConfigError as e:
        assert repr(name) in str(e)
    else:
        round_trip = TrainConfig.from_dict(cfg.to_dict())
        assert round_trip == cfg


def test_a_model_config_with_a_bad_value_is_a_clear_checkpoint_error(tmp_path):
    mixerlab.create_model("mixer_nano").save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "depth": "six"}))
    with pytest.raises(mixerlab.CheckpointError, match="mixer model option 'depth': 'six' is not an integer"):
        mixerlab.from_pretrained(tmp_path / "m")


# ---------------------------------------------------------------------------- files and folders
def test_out_that_is_a_file_fails_before_the_data_loads(tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    assert cli(["train", "--data", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file, not a folder" in err  # not the data error: --out is checked first


def test_a_full_disk_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import mixerlab.training.checkpoint as ckpt_mod

    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=1))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    real_save = torch.save

    def full(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)  # some bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full)
    with pytest.raises(mixerlab.MixerlabError, match=r"no space left on the disk holding .*run .* while writing "
                                                     r".*last.pt; the previous last.pt is kept"):
        train(resume=str(tmp_path / "run"), resume_overrides={"epochs": 2})
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_a_corrupt_checkpoint_is_called_corrupt(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02" + bytes(range(256)) * 4)
    with pytest.raises(mixerlab.CheckpointError, match="corrupt file: not a readable torch checkpoint"):
        mixerlab.from_pretrained(tmp_path / "bad.pt")


def test_a_timm_vit_without_its_head_count_is_refused_not_guessed(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=96,
                            num_heads=4, depth=2, num_classes=3).eval()  # 24-wide heads: C/64 would be wrong
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(ref.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(mixerlab.CheckpointError, match="does not record how many attention heads.*num_heads=N"):
        mixerlab.from_pretrained(tmp_path / "vit.pth")
    ours = mixerlab.from_pretrained(tmp_path / "vit.pth", num_heads=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)


def test_a_resumed_epoch_reports_the_loss_of_all_its_steps(tmp_path):
    root = make_image_folder(tmp_path / "shapes")
    cfg = tiny_cfg(tmp_path, root)
    train(TrainConfig.from_dict({**cfg.to_dict(), "out": str(tmp_path / "straight")}))
    train(cfg, stop_after_steps=6)  # epoch 2, step 2 of 4
    train(resume=str(tmp_path / "run"))
    rows = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in
            ("straight", "run")]
    for a, b in zip(*rows):
        for k in ("train_loss", "grad_norm", "grad_norm_max", "val_loss"):
            assert a[k] == b[k], k


def test_old_option_names_still_load_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'drop_path' is now 'drop_path_rate'"):
        assert TrainConfig.from_dict({"drop_path": 0.1}).drop_path_rate == 0.1
    assert tuple(TINY)  # the shared tiny model stays importable for these tests


# ---------------------------------------------------------------------------------------- resume
def test_resume_applies_the_flags_that_may_change_and_records_them(tmp_path):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=1))
    assert cli(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--eval-batch-size", "7", "--quiet"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["epochs"], saved["eval_batch_size"]) == (2, 7)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


@pytest.mark.parametrize("flags,named", [
    (["--lr", "1e-3"], "--lr"), (["--batch-size", "4", "--mixup", "0.2"], "--batch-size, --mixup"),
    (["--model-arg", "depth=3"], "--model-arg"), (["--recipe", "demo"], "--recipe"),
])
def test_resume_refuses_any_other_flag_before_anything_runs(tmp_path, capsys, flags, named):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=1))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert cli(["train", "--resume", str(tmp_path / "run"), "--epochs", "3", *flags]) == 2
    err = capsys.readouterr().err
    assert f"{named} cannot change when resuming" in err and "--pretrained" in err
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from mixerlab.io_utils import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_version_flag(capsys):
    from importlib.metadata import version

    from mixerlab.cli import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mixerlab {version('mixerlab')}"

"""Weights in and out: timm parity, our own format, the HF cache, conversion, resizing, and safety."""

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.weights.official import read_npz

timm = pytest.importorskip("timm")


def tiny(**kw):
    cfg = dict(img_size=32, patch_size=4, embed_dim=32, tokens_mlp_dim=16, channels_mlp_dim=64, depth=2,
               num_classes=5)
    cfg.update(kw)
    model = mixerlab.MlpMixer(mixerlab.MixerConfig(**cfg))
    with torch.no_grad():  # non-zero everywhere, the head and the norms too
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 and p.shape[0] == cfg["embed_dim"] else 0))
    return model.eval()


def perturbed_timm(name: str) -> torch.nn.Module:
    """A timm model with non-zero weights everywhere (its head and norms too), seeded."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.02 if p.ndim > 1 else 0.1) + (1.0 if "norm" in n and
                                                                            n.endswith("weight") else 0.0))
    return model


@pytest.fixture(scope="module")
def timm_b16():
    return perturbed_timm("mixer_b16_224")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_b16_parity(timm_b16, tmp_path, suffix):
    path = tmp_path / f"mixer_b16{suffix}"
    if suffix == ".pth":
        torch.save(timm_b16.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(timm_b16.state_dict(), str(path))
    ours = mixerlab.from_pretrained(path).eval()
    assert ours.config.act == "gelu"  # timm's exact GELU, so that logits equal timm's
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = timm_b16(x)
        assert ref.abs().max() > 0.1
        torch.testing.assert_close(ours(x), ref, rtol=0, atol=1e-5)


def test_export_to_timm_loads_strictly(tmp_path):
    model = tiny()
    mixerlab.save_timm(model, tmp_path / "t.pth")
    cfg = model.config
    from timm.models.mlp_mixer import MlpMixer as TimmMixer

    t = TimmMixer(img_size=32, patch_size=4, embed_dim=32, num_blocks=2,
                          mlp_ratio=(0.5, 2.0), num_classes=5, act_layer=torch.nn.GELU).eval()
    t.load_state_dict(torch.load(tmp_path / "t.pth", weights_only=True), strict=True)
    x = torch.randn(3, 3, 32, 32)
    exact = mixerlab.MlpMixer(cfg.replace(act="gelu")).eval()
    exact.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(t(x), exact(x), rtol=0, atol=1e-6)


def test_save_pretrained_round_trip_is_exact(tmp_path):
    model = tiny()
    model.class_names = ["a", "b", "c", "d", "e"]
    model.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]
    back = mixerlab.MlpMixer.from_pretrained(tmp_path / "m")
    assert back.config == model.config and back.class_names == model.class_names
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    # the safetensors file alone carries the config too
    alone = mixerlab.from_pretrained(tmp_path / "m" / "model.safetensors")
    assert alone.config == model.config


def test_vit_round_trip(tmp_path):
    vit = mixerlab.create_model("vit_nano").eval()
    vit.save_pretrained(tmp_path / "v")
    back = mixerlab.from_pretrained(tmp_path / "v").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), vit(x))


def test_hugging_face_cache_offline(tmp_path, monkeypatch):
    """'user/repo' resolves from the HF cache without any network."""
    model = tiny()
    snap = tmp_path / "hub" / "models--someone--tiny-mixer" / "snapshots" / ("a" * 40)
    model.save_pretrained(snap)
    (tmp_path / "hub" / "models--someone--tiny-mixer" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-mixer" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    back = mixerlab.from_pretrained("someone/tiny-mixer")
    assert torch.equal(back.head.weight, model.head.weight)
    # a timm repo in the cache: model.safetensors (a timm state dict) beside timm's own config.json
    snap = tmp_path / "hub" / "models--timm--tiny" / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    mixerlab.save_timm(model, snap / "model.safetensors")
    (snap / "config.json").write_text('{"architecture": "mixer_b16_224", "num_classes": 5}')
    (tmp_path / "hub" / "models--timm--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--tiny" / "refs" / "main").write_text("b" * 40)
    from_timm = mixerlab.from_pretrained("timm/tiny")
    assert from_timm.config.act == "gelu" and torch.equal(from_timm.head.weight, model.head.weight)
    with pytest.raises(mixerlab.CheckpointError, match="not in the Hugging Face cache"):
        mixerlab.from_pretrained("someone/not-there")


def test_new_num_classes_replaces_only_the_head(tmp_path, caplog):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    with caplog.at_level("WARNING"):
        new = mixerlab.from_pretrained(tmp_path / "m", num_classes=3)
    assert "replacing the 5-class head" in caplog.text
    assert new.head.weight.shape == (3, 32) and torch.count_nonzero(new.head.weight) == 0
    for k, v in model.state_dict().items():
        if not k.startswith("head"):
            assert torch.equal(new.state_dict()[k], v)


# ------------------------------------------------------------------------------------------- convert
def test_convert_cli_round_trips(official_dir, tmp_path):
    src = official_dir / "tiny_p4" / "params.npz"
    assert cli(["convert", str(src), str(tmp_path / "ours"), "--format", "mixerlab"]) == 0
    assert cli(["convert", str(tmp_path / "ours"), str(tmp_path / "t.safetensors"), "--format", "timm"]) == 0
    assert cli(["convert", str(tmp_path / "t.safetensors"), str(tmp_path / "back.npz"), "--format", "official"]) == 0
    a, b = read_npz(src), read_npz(tmp_path / "back.npz")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_old_option_names_still_work_and_say_the_new_one(official_dir, tmp_path, capsys):
    src = official_dir / "tiny_p4" / "params.npz"
    assert cli(["convert", str(src), str(tmp_path / "ours"), "--to", "mixerlab"]) == 0
    assert "note: --to is now --format" in capsys.readouterr().err
    assert (tmp_path / "ours" / "config.json").is_file()
    assert cli(["convert", str(src), str(tmp_path / "x")]) == 2
    assert "convert needs --format mixerlab, timm, official or hub" in capsys.readouterr().err
    assert "--to" not in __import__("subprocess").run(
        [sys.executable, "-m", "mixerlab", "convert", "--help"], capture_output=True, text=True).stdout


# -------------------------------------------------------------------------------------------- resize
def _mosaic(images, k, method):
    """Four images into one (2x2): side by side ('tiles'), or patch-interleaved ('strided')."""
    b, c, h, w = images[0].shape
    if method == "tiles":
        rows = [torch.cat(images[i * k:(i + 1) * k], dim=3) for i in range(k)]
        return torch.cat(rows, dim=2)
    p = 4
    out = torch.zeros(b, c, h * k, w * k)
    for u in range(k):
        for v in range(k):
            img = images[u * k + v]
            for i in range(h // p):
                for j in range(w // p):
                    r, s = (i * k + u) * p, (j * k + v) * p
                    out[:, :, r:r + p, s:s + p] = img[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
    return out


@pytest.mark.parametrize("method", ["tiles", "strided"])
def test_block_diagonal_resize_averages_the_mosaic(method):
    model = tiny()
    big = mixerlab.resize_token_mixing(model, 64, method=method).eval()
    assert big.config.tokens_mlp_dim == 4 * 16 and big.config.img_size == (64, 64)
    images = [torch.randn(3, 3, 32, 32) for _ in range(4)]
    with torch.no_grad():
        expected = torch.stack([model(x) for x in images]).mean(0)
        torch.testing.assert_close(big(_mosaic(images, 2, method)), expected, rtol=0, atol=1e-5)


def test_interpolate_to_the_same_size_is_identity():
    model = tiny()
    same = mixerlab.resize_token_mixing(model, 32, method="interpolate").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x), rtol=0, atol=1e-6)


def test_from_pretrained_img_size(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    assert mixerlab.from_pretrained(tmp_path / "m", img_size=64).config.tokens_mlp_dim == 64  # tiles
    m = mixerlab.from_pretrained(tmp_path / "m", img_size=48)  # 12x12 grid from 8x8: interpolate
    assert m.config.tokens_mlp_dim == 16 and m(torch.randn(1, 3, 48, 48)).shape == (1, 5)
    with pytest.raises(ValueError, match="needs a whole factor per side"):
        mixerlab.from_pretrained(tmp_path / "m", img_size=48, resize_method="tiles")


# ------------------------------------------------------------------------------------ safety, errors
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EVIL_MARKER', '/tmp/mixerlab-evil')}",))


def test_pickled_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"stem.proj.weight": torch.zeros(1), "payload": _Evil()}, path)
    with pytest.raises(mixerlab.CheckpointError, match="refused to load.*never unpickles code"):
        mixerlab.from_pretrained(path)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(mixerlab.CheckpointError, match="evil.pkl"):
        mixerlab.from_pretrained(raw)
    assert not marker.exists()


def test_resnet_state_dict_is_rejected(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(mixerlab.CheckpointError, match=r"resnet\.pth: not an MLP-Mixer or ViT checkpoint.*conv1"):
        mixerlab.from_pretrained(tmp_path / "resnet.pth")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    sd = tiny().state_dict()
    sd["blocks.1.mlp_channels.fc1.weight"] = torch.zeros(64, 31)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(mixerlab.CheckpointError,
                       match=r"bad\.pth: key 'blocks\.1\.mlp_channels\.fc1\.weight' has shape \[64, 31\], "
                             r"the model expects \[64, 32\]"):
        mixerlab.from_pretrained(tmp_path / "bad.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_files(tmp_path, suffix):
    model = tiny()
    path = tmp_path / f"m{suffix}"
    mixerlab.save_timm(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(mixerlab.CheckpointError, match=path.name):
        mixerlab.from_pretrained(path)


def test_missing_file():
    with pytest.raises(mixerlab.CheckpointError, match="no such file"):
        mixerlab.from_pretrained("/nonexistent/weights.npz")


# --------------------------------------------------------------------------- create_model(pretrained=)
def test_create_model_with_pretrained_checks_the_name(tmp_path):
    vit_like = tmp_path / "vit"
    mixerlab.create_model("vit_nano").save_pretrained(vit_like)
    with pytest.raises(mixerlab.CheckpointError, match=r"holds a vit model, but 'mixer_nano' is a mixer"):
        mixerlab.create_model("mixer_nano", pretrained=vit_like)
    nano = mixerlab.create_model("mixer_nano", num_classes=3)
    nano.save_pretrained(tmp_path / "nano")
    with pytest.raises(mixerlab.CheckpointError, match=r"does not fit 'mixer_micro': embed_dim=128 \(the name: 256\)"):
        mixerlab.create_model("mixer_micro", pretrained=tmp_path / "nano")
    # The name fits: the head and the resolution may still change, as with from_pretrained.
    same = mixerlab.create_model("mixer_nano", pretrained=tmp_path / "nano", num_classes=7, img_size=56)
    assert same.num_classes == 7 and same.config.img_size == (56, 56)
    for k, v in nano.state_dict().items():
        if k.startswith("stem"):
            assert torch.equal(same.state_dict()[k], v)
    # A named size with its structural overrides fits a checkpoint that was trained with them.
    small = mixerlab.create_model("mixer_nano", depth=2)
    small.save_pretrained(tmp_path / "d2")
    assert mixerlab.create_model("mixer_nano", pretrained=tmp_path / "d2", depth=2).config.depth == 2


def test_model_class_from_pretrained_reads_its_own_format_and_points_elsewhere(tmp_path):
    model = tiny()
    mixerlab.save_official(model, tmp_path / "m.npz")
    with pytest.raises(mixerlab.CheckpointError, match=r"use mixerlab.from_pretrained\(.*m.npz'\)"):
        mixerlab.MlpMixer.from_pretrained(tmp_path / "m.npz")
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(mixerlab.CheckpointError, match="holds no VisionTransformer"):
        mixerlab.VisionTransformer.from_pretrained(tmp_path / "m")
    back = mixerlab.MlpMixer.from_pretrained(tmp_path / "m", drop_path_rate=0.1)
    assert back.config.drop_path_rate == 0.1
    assert torch.equal(back.state_dict()["head.weight"], model.state_dict()["head.weight"])


# ------------------------------------------------------------------------------ preprocessing travels
def test_timm_miil_weights_in_the_hf_cache_use_their_own_preprocessing(tmp_path, monkeypatch, capsys):
    """A timm repo laid out as the Hugging Face cache holds it (timm's own save_for_hf): mixerlab reads
    its pretrained_cfg (miil: mean 0, std 1, bilinear) and predicts what timm predicts with timm's eval
    transform on the same image."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.models import save_for_hf

    ref = perturbed_timm("mixer_b16_224.miil_in21k")
    with torch.no_grad():
        ref.head.weight.mul_(12)  # a peaked answer, so that a 1e-3 bound on probabilities means something
    snap = tmp_path / "hub" / "models--timm--mixer_b16_224.miil_in21k" / "snapshots" / ("c" * 40)
    save_for_hf(ref, str(snap), safe_serialization=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("c" * 40)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))  # not square, not 224
    photo.save(tmp_path / "photo.png")
    tf = create_transform(**resolve_data_config({}, model=ref))
    with torch.no_grad():
        want = ref(tf(photo).unsqueeze(0)).softmax(-1)[0]
    assert 0.2 < want.max() < 0.99

    ours = mixerlab.from_pretrained("timm/mixer_b16_224.miil_in21k")
    assert (ours.config.mean, ours.config.std, ours.config.interpolation) == ((0.0,) * 3, (1.0,) * 3, "bilinear")
    assert cli(["predict", "timm/mixer_b16_224.miil_in21k", str(tmp_path / "photo.png"), "--json", "--topk", "5"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert [t["index"] for t in top] == want.topk(5).indices.tolist()
    diff = max(abs(t["prob"] - want[t["index"]].item()) for t in top)
    print(f"miil: top-1 {want.max():.4f}, max |p - p_timm| over the top 5 {diff:.2e}")
    assert diff < 1e-3
    # The same file with Google's preprocessing assumed gives other numbers: the cfg matters.
    goog = mixerlab.from_pretrained("timm/mixer_b16_224.miil_in21k", mean=(0.5,) * 3, std=(0.5,) * 3)
    from mixerlab.predict import predict_files

    other = predict_files(goog, [tmp_path / "photo.png"], topk=1)[0]["top"][0]
    print(f"with goog preprocessing assumed: |p - p_timm| = {abs(other['prob'] - want[other['index']].item()):.3f}")
    assert abs(other["prob"] - want[other["index"]].item()) > 1e-3


def test_preprocessing_round_trips_through_every_format_that_can_carry_it(tmp_path, caplog):
    model = tiny(mean=(0.1, 0.2, 0.3), std=(0.9, 0.8, 0.7), interpolation="bilinear", crop_pct=1.0)
    pre = lambda m: (m.config.mean, m.config.std, m.config.interpolation, m.config.crop_pct)  # noqa: E731
    model.save_pretrained(tmp_path / "m")
    assert pre(mixerlab.from_pretrained(tmp_path / "m")) == pre(model)
    assert pre(mixerlab.from_pretrained(tmp_path / "m" / "model.safetensors")) == pre(model)
    mixerlab.save_timm(model, tmp_path / "t.safetensors")
    assert pre(mixerlab.from_pretrained(tmp_path / "t.safetensors")) == pre(model)
    mixerlab.save_timm(model, tmp_path / "t.pth")  # a bare state dict cannot carry it: said, and overridable
    with caplog.at_level("INFO"):
        bare = mixerlab.from_pretrained(tmp_path / "t.pth")
    assert bare.config.mean == (0.5,) and "assumed Google's (mean 0.5, std 0.5" in caplog.text
    given = mixerlab.from_pretrained(tmp_path / "t.pth", mean=(0.1, 0.2, 0.3), std=(0.9, 0.8, 0.7))
    assert (given.config.mean, given.config.std) == ((0.1, 0.2, 0.3), (0.9, 0.8, 0.7))
    with pytest.raises(mixerlab.ConfigError, match="'mean': \\[0.1, 0.2\\] has 2 values; give 1 or in_chans = 3"):
        mixerlab.from_pretrained(tmp_path / "m", mean=(0.1, 0.2))


def test_a_config_saved_before_preprocessing_existed_keeps_the_old_resize(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for k in ("mean", "std", "interpolation", "crop_pct"):
        del cfg[k]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    old = mixerlab.MlpMixer.from_pretrained(tmp_path / "m").config
    assert (old.mean, old.std, old.interpolation, old.crop_pct) == ((0.5,), (0.5,), "bilinear", 1.0)

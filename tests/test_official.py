"""Parity with Google's official Flax MLP-Mixer, and the official checkpoint format."""

import json

import numpy as np
import pytest
import torch

import mixerlab
from mixerlab.weights.official import convert_pre_linen, read_npz
from tests.conftest import OFFICIAL_CASES, load_case


@pytest.mark.parametrize("case", OFFICIAL_CASES)
def test_reproduces_official_logits(official_dir, case):
    npz, x, ref = load_case(official_dir, case)
    model = mixerlab.from_pretrained(npz).eval()
    with torch.no_grad():
        out = model(x).numpy()
    assert out.shape == ref.shape
    tol = 1e-5 if case == "tiny_p4_lecun" else 1e-6
    assert np.abs(out - ref).max() <= tol


def test_config_inferred_from_shapes(official_dir):
    meta = json.loads((official_dir / "small_p8_gray" / "meta.json").read_text())["config"]
    cfg = mixerlab.from_pretrained(official_dir / "small_p8_gray" / "params.npz").config
    assert cfg.patch_size == meta["patch"] and cfg.img_size == (meta["image"], meta["image"])
    assert cfg.in_chans == meta["channels"] and cfg.embed_dim == meta["hidden_dim"]
    assert cfg.tokens_mlp_dim == meta["tokens_mlp_dim"] and cfg.channels_mlp_dim == meta["channels_mlp_dim"]
    assert cfg.depth == meta["num_blocks"] and cfg.num_classes == meta["num_classes"]
    assert cfg.act == "gelu_tanh"


def test_no_head_gives_pooled_features(official_dir):
    model = mixerlab.from_pretrained(official_dir / "tiny_nohead" / "params.npz")
    assert model.num_classes == 0 and model.num_features == 64


def test_exact_gelu_is_distinguishable(official_dir):
    """The lecun-scaled case separates tanh GELU (official) from exact GELU."""
    npz, x, ref = load_case(official_dir, "tiny_p4_lecun")
    model = mixerlab.from_pretrained(npz, act="gelu").eval()
    with torch.no_grad():
        assert np.abs(model(x).numpy() - ref).max() > 1e-5


def test_pre_linen_names_are_renumbered(official_dir):
    arrays = read_npz(official_dir / "tiny_p4" / "params.npz")
    # Pre-Linen numbered submodules in one sequence per parent: LayerNorm_0, token_mixing, LayerNorm_2.
    old = {k.replace("LayerNorm_1/", "LayerNorm_2/"): v for k, v in arrays.items()}
    assert any("LayerNorm_2" in k for k in old)
    assert sorted(convert_pre_linen(old)) == sorted(arrays)
    npz, x, ref = load_case(official_dir, "tiny_p4")
    cfg = mixerlab.from_pretrained(npz).config
    from mixerlab.weights.official import official_to_state_dict

    model = mixerlab.MlpMixer(cfg).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(official_to_state_dict(old, cfg, shapes))
    with torch.no_grad():
        assert np.abs(model(x).numpy() - ref).max() <= 1e-6


def _random_layout(path, layout_file):
    layout = json.loads(layout_file.read_text())
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(shape, dtype=np.float32) * 0.02 for k, shape in layout["param_keys"]}
    np.savez(path, **arrays)
    return layout


@pytest.mark.parametrize("size", ["B16", "L16"])
def test_real_checkpoint_layouts_load_and_save_back(official_dir, tmp_path, size):
    layout = _random_layout(tmp_path / "ckpt.npz", official_dir / f"checkpoint_layout_{size}.json")
    model = mixerlab.from_pretrained(tmp_path / "ckpt.npz")
    cfg = model.config
    assert cfg.num_classes == 21843 and cfg.patch_size == 16 and cfg.img_size == (224, 224)
    assert mixerlab.count_params(model) == layout["num_params"]
    if size == "B16":
        assert mixerlab.count_params(model) == 75_908_739
    mixerlab.save_official(model, tmp_path / "back.npz")
    with np.load(tmp_path / "back.npz", allow_pickle=False) as z:
        back = {k: list(z[k].shape) for k in z.files}
    assert back == {k: shape for k, shape in layout["param_keys"]}


def test_official_round_trip_is_exact(official_dir, tmp_path):
    npz = official_dir / "tiny_p4" / "params.npz"
    model = mixerlab.from_pretrained(npz)
    mixerlab.save_official(model, tmp_path / "rt.npz")
    a, b = read_npz(npz), read_npz(tmp_path / "rt.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_missing_key_is_named(official_dir, tmp_path):
    arrays = read_npz(official_dir / "tiny_p4" / "params.npz")
    del arrays["MixerBlock_1/channel_mixing/Dense_1/bias"]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(mixerlab.CheckpointError, match=r"bad\.npz.*MixerBlock_1/channel_mixing/Dense_1/bias"):
        mixerlab.from_pretrained(tmp_path / "bad.npz")


def test_extra_key_is_named(official_dir, tmp_path):
    arrays = read_npz(official_dir / "tiny_p4" / "params.npz")
    arrays["MixerBlock_0/extra/kernel"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(mixerlab.CheckpointError, match="unexpected keys.*MixerBlock_0/extra/kernel"):
        mixerlab.from_pretrained(tmp_path / "bad.npz")


def test_misshaped_key_names_both_shapes(official_dir, tmp_path):
    arrays = read_npz(official_dir / "tiny_p4" / "params.npz")
    arrays["MixerBlock_1/token_mixing/Dense_1/kernel"] = np.zeros((32, 63), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(mixerlab.CheckpointError, match=r"token_mixing/Dense_1/kernel.*\[32, 63\].*\[32, 64\]"):
        mixerlab.from_pretrained(tmp_path / "bad.npz")


def test_truncated_file(official_dir, tmp_path):
    data = (official_dir / "tiny_p4" / "params.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(mixerlab.CheckpointError, match="cut.npz"):
        mixerlab.from_pretrained(tmp_path / "cut.npz")

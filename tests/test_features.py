"""timm's feature API on our models: the same weights give timm's own forward_intermediates outputs."""

import pytest
import torch

import mixerlab

from .test_weights import perturbed_timm

timm = pytest.importorskip("timm")

COMBOS = [dict(indices=(1, -2), norm=False, output_fmt="NCHW"),
          dict(indices=3, norm=True, output_fmt="NLC", stop_early=True, intermediates_only=True)]


@pytest.fixture(scope="module", params=[("mixer_b16_224", "mixer_b16_224"), ("vit_base_patch16_224", "vit_b16_224")],
                ids=["mixer_b16", "vit_b16"])
def pair(request, tmp_path_factory):
    timm_name, ours_name = request.param
    theirs = perturbed_timm(timm_name)
    path = tmp_path_factory.mktemp("w") / f"{timm_name}.pth"
    torch.save(theirs.state_dict(), path)
    return theirs, mixerlab.create_model(ours_name, pretrained=path).eval()


@pytest.mark.parametrize("kw", COMBOS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_forward_intermediates_equal_timms(pair, kw):
    theirs, ours = pair
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = theirs.forward_intermediates(x, **kw), ours.forward_intermediates(x, **kw)
    if not kw.get("intermediates_only"):
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
        want, got = want[1], got[1]
    assert len(got) == len(want) and len(got) > 0
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_vit_prefix_tokens_and_pruning_as_timm(pair):
    theirs, ours = pair
    if not isinstance(ours, mixerlab.VisionTransformer):
        pytest.skip("a Mixer has no prefix tokens")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        w = theirs.forward_intermediates(x, indices=2, return_prefix_tokens=True, intermediates_only=True)
        g = ours.forward_intermediates(x, indices=2, return_prefix_tokens=True, intermediates_only=True)
    for (gs, gp), (ws, wp) in zip(g, w):
        torch.testing.assert_close(gs, ws, rtol=0, atol=1e-5)
        torch.testing.assert_close(gp, wp, rtol=0, atol=1e-5)


def test_prune_and_features_only_on_a_small_mixer(tmp_path):
    model = mixerlab.create_model("mixer_nano", num_classes=7)  # 28 px, patch 4: a 7x7 grid
    depth = len(model.blocks)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    kept = model.prune_intermediate_layers([1, 3])
    assert kept == [1, 3] and len(model.blocks) == 4 and model.num_classes == 0
    with torch.no_grad():
        for a, b in zip(model.forward_intermediates(x, indices=[1, 3], intermediates_only=True), full):
            torch.testing.assert_close(a, b)
        assert model(x).shape == (2, model.num_features)  # no head: the pooled features
    feats = mixerlab.create_model("mixer_nano", features_only=True, out_indices=(-1, 2))
    out = feats(x)
    assert [tuple(o.shape) for o in out] == [(2, 128, 7, 7)] * 2 and feats.out_indices == [depth - 1, 2]
    assert feats.feature_info.channels() == [128, 128] and feats.feature_info.reduction() == [4, 4]
    with pytest.raises(ValueError, match=f"indices=\\[{depth}\\]: each must be a block in 0..{depth - 1}"):
        mixerlab.create_model("mixer_nano").forward_intermediates(x, indices=[depth])
    with pytest.raises(ValueError, match="output_fmt='NHWC': must be 'NCHW' or 'NLC'"):
        mixerlab.create_model("mixer_nano").forward_intermediates(x, output_fmt="NHWC")


def test_set_input_size_is_the_appendix_c_resize_in_place():
    model = mixerlab.create_model("mixer_nano").eval()
    copy = mixerlab.resize_token_mixing(model, 56, method="tiles")
    model.set_input_size(56, method="tiles")
    x = torch.randn(2, 1, 56, 56)
    assert model.config.img_size == (56, 56) and model.config.tokens_mlp_dim == copy.config.tokens_mlp_dim
    with torch.no_grad():
        torch.testing.assert_close(model(x), copy(x))
    with pytest.raises(ValueError, match="224"):
        model(torch.randn(1, 1, 224, 224))

"""The model itself: the fast layout against the plain formulation, sizes, API and input errors."""

import json

import pytest
import torch

import mixerlab
from mixerlab.models.mixer import mixer_reference_forward


def small(**kw):
    base = dict(img_size=32, patch_size=4, embed_dim=48, tokens_mlp_dim=24, channels_mlp_dim=96, depth=3,
                num_classes=7)
    base.update(kw)
    return mixerlab.MlpMixer(mixerlab.MixerConfig(**base))


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("act", ["gelu_tanh", "gelu"])
@pytest.mark.parametrize("img_size", [32, (24, 40)])
def test_token_major_layout_equals_plain_formulation(act, img_size):
    model = randomize(small(act=act, img_size=img_size)).eval()
    x = torch.randn(5, 3, *((img_size,) * 2 if isinstance(img_size, int) else img_size))
    with torch.no_grad():
        torch.testing.assert_close(model(x), mixer_reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_token_mixing_as_rows_gives_the_same_values_and_gradients():
    # the layout perf/inference.py compiles in fp32: Linear layers over the (B*C, S) transpose
    from mixerlab.perf.inference import token_mixing_as_rows

    model = randomize(small(img_size=(24, 40)))
    rows = token_mixing_as_rows(model)
    assert not any(getattr(m, "rows", False) for m in model.modules())  # the original is untouched
    x = torch.randn(5, 3, 24, 40)
    out, out_rows = model(x), rows(x)
    torch.testing.assert_close(out_rows, out, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    out_rows.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), rows.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_the_compiled_form_of_the_tanh_gelu_is_the_same_function():
    from mixerlab.models.layers import GeluTanh, gelu_tanh_as_sigmoid

    x = torch.linspace(-12, 12, 20001, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    torch.testing.assert_close(gelu_tanh_as_sigmoid(x), ref, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(gelu_tanh_as_sigmoid(x).sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)
    act = GeluTanh()
    assert act.approximate == "tanh" and "tanh" in repr(act)  # still an nn.GELU for everything that reads it
    traced = []

    def backend(gm, example_inputs):  # records what Dynamo traced, then runs it as it is
        traced.extend(str(n.target) for n in gm.graph.nodes)
        return gm

    compiled = torch.compile(act, backend=backend)
    torch.testing.assert_close(compiled(x.detach().float()), ref.detach().float(), rtol=1e-5, atol=1e-6)
    assert any("sigmoid" in t for t in traced) and not any("gelu" in t for t in traced)


def test_forward_features_and_head():
    model = randomize(small()).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 48)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 48)


PAPER = {  # name: (params with 1000 classes, GMACs per 224 px image)
    "mixer_b16_224": (59_880_472, 12.6),
    "mixer_b32_224": (60_293_428, 3.2),
    "mixer_l16_224": (208_196_168, 44.5),
    "vit_b16_224": (86_567_656, 17.6),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_official_parameter_counts_and_macs(name):
    with torch.device("meta"):
        model = mixerlab.create_model(name)
    params, gmacs = PAPER[name]
    assert mixerlab.count_params(model) == params
    assert round(mixerlab.count_macs(model) / 1e9, 1) == gmacs


def test_paper_configs_follow_table_1():
    expected = {"s": (512, 256, 2048, 8), "b": (768, 384, 3072, 12), "l": (1024, 512, 4096, 24),
                "h": (1280, 640, 5120, 32)}
    names = mixerlab.list_models("mixer_*_224")
    assert names == sorted(["mixer_s32_224", "mixer_s16_224", "mixer_b32_224", "mixer_b16_224",
                            "mixer_l32_224", "mixer_l16_224", "mixer_h14_224"])
    for n in names:
        cfg = mixerlab.get_config(n)
        assert (cfg.embed_dim, cfg.tokens_mlp_dim, cfg.channels_mlp_dim, cfg.depth) == expected[n[6]]
        assert cfg.patch_size == int(n[7:9]) and cfg.norm_eps == 1e-6 and cfg.act == "gelu_tanh"


def test_macs_match_a_traced_count():
    """The analytical count equals the GEMM MACs torch's FLOP counter sees in a real forward.
    (Only the Mixer: the counter does not see the CPU attention kernel; ViT is checked against timm.)"""
    from torch.utils.flop_counter import FlopCounterMode

    for model in (small(), small(img_size=(24, 40), embed_dim=32)):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.randn(1, 3, *model.config.img_size))
        assert counter.get_total_flops() == 2 * mixerlab.count_macs(model)


def test_config_round_trips_through_json():
    for name in ["mixer_b16_224", "vit_s16_224", "mixer_nano"]:
        cfg = mixerlab.get_config(name, num_classes=3, img_size=(64, 96) if name == "mixer_nano" else 224)
        back = mixerlab.config_from_dict(json.loads(cfg.to_json()))
        assert back == cfg


def test_head_is_zero_initialised_and_num_classes_zero_gives_features():
    model = small()
    assert torch.count_nonzero(model.head.weight) == 0
    feats = small(num_classes=0)(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 48)


def test_jax_init_is_lecun_normal():
    model = mixerlab.MlpMixer(mixerlab.MixerConfig(embed_dim=256, channels_mlp_dim=1024, tokens_mlp_dim=128,
                                                   depth=1, img_size=64, patch_size=8))
    w = model.blocks[0].mlp_channels.fc1.weight
    assert abs(w.std().item() - (1 / 256) ** 0.5) < 0.002
    assert w.abs().max().item() <= 2 * (1 / 256) ** 0.5 / 0.8796 + 1e-6  # truncated at 2 std
    assert torch.count_nonzero(model.blocks[0].mlp_channels.fc1.bias) == 0


def test_a_mixer_built_without_wasted_init_initialises_every_tensor():
    """Built on the meta device and given storage once: every parameter must come out of init_weights
    (uninitialised memory would pass a shape check and fail silently later)."""
    torch.manual_seed(0)
    for mode in ("jax", "timm"):
        model = mixerlab.create_model("mixer_nano", init=mode)
        for name, p in model.named_parameters():
            assert torch.isfinite(p).all(), name
            if "norm" in name and name.endswith("weight"):
                assert torch.equal(p, torch.ones_like(p)), name
            elif name.startswith("head") or (mode == "jax" and name.endswith("bias")):
                assert torch.count_nonzero(p) == 0, name
            elif name.endswith("weight"):  # lecun-normal: std 1/sqrt(fan_in); xavier: near it
                assert 0.3 < p.std().item() * p[0].numel() ** 0.5 < 2.5, name
    with torch.device("meta"):  # shapes only: no storage, no init
        meta = mixerlab.create_model("mixer_h14_224")
    assert all(p.is_meta for p in meta.parameters()) and sum(p.numel() for p in meta.parameters()) > 400e6


def test_reset_classifier():
    model = small()
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.config.num_classes == 3
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 48)


def test_drop_path_rises_linearly_and_is_off_in_eval():
    model = randomize(small(drop_path_rate=0.3))
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.15, 0.3])
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))


def test_gradient_checkpointing_gives_the_same_gradients():
    model = randomize(small())
    x = torch.randn(4, 3, 32, 32)
    model(x).square().sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for r, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, r)


def test_vit_api():
    model = mixerlab.create_model("vit_nano", num_classes=5)
    x = torch.randn(2, 1, 28, 28)
    assert model.forward_features(x).shape == (2, 50, 128)
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(2, 3, 64, 64), r"input image size 64x64 does not match the model's 32x32"),
        (torch.randn(2, 1, 32, 32), r"takes 3 input channels, got 1"),
        (torch.randn(2, 32, 32, 3), r"takes 3 input channels, got 32 \(the input looks NHWC"),
        (torch.randn(3, 32, 32), r"4-D batch"),
    ],
)
def test_bad_input_gives_a_clear_error(x, message):
    with pytest.raises(ValueError, match=message):
        small()(x)


def test_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match="30x30 is not divisible by patch_size 4"):
        mixerlab.create_model("mixer_nano", img_size=30)


def test_unknown_model_and_bad_override():
    with pytest.raises(ValueError, match="unknown model 'mixer_x16_224'"):
        mixerlab.create_model("mixer_x16_224")
    with pytest.raises(ValueError, match="bad override"):
        mixerlab.create_model("mixer_nano", colour=3)

"""The optimisers: which tensors Muon gets, that its update is orthogonalised, and that the hybrid
behaves as one optimiser for the scheduler and checkpoints."""

import pytest
import torch

from mixerlab import create_model
from mixerlab.training.optim import MuonAdamW, build_optimizer

TINY = dict(embed_dim=32, tokens_mlp_dim=16, channels_mlp_dim=64, depth=2, patch_size=4)


def test_muon_gets_the_hidden_matrices_and_adamw_the_rest():
    model = create_model("mixer_nano", **TINY)
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, MuonAdamW)
    name = {id(p): n for n, p in model.named_parameters()}
    muon = {name[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {name[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {f"blocks.{i}.{m}.{fc}.weight" for i in range(2) for m in ("mlp_tokens", "mlp_channels")
                    for fc in ("fc1", "fc2")}
    assert muon.isdisjoint(adamw) and muon | adamw == set(name.values())
    assert {"stem.proj.weight", "head.weight", "norm.weight", "blocks.0.norm1.bias"} <= adamw
    decayed = {name[id(p)] for g in opt.adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"stem.proj.weight", "head.weight"}  # biases and norms are not decayed


def test_one_scheduler_steers_both_halves():
    model = create_model("mixer_nano", **TINY)
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    sched.step()
    lrs = [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups]
    assert lrs == pytest.approx([5e-4] * len(lrs))


def test_the_muon_update_is_orthogonalised():
    # A Gaussian 256x128 gradient has singular values spread about 6:1. Muon's first step moves the
    # weight by (almost) an orthogonal matrix: its singular values come out within Newton-Schulz's
    # 0.5-1.5 band, scaled by lr * 0.2 * sqrt(256) (the match_rms_adamw rule).
    torch.manual_seed(0)
    body = torch.nn.Sequential()
    body.add_module("fc", torch.nn.Linear(128, 256, bias=False))
    w0 = body.fc.weight.detach().clone()
    body.fc.weight.grad = torch.randn(256, 128)
    spread = torch.linalg.svdvals(body.fc.weight.grad)
    assert spread.max() / spread.min() > 4
    opt = build_optimizer(body, "muon", lr=1e-2, weight_decay=0.0)
    opt.step()
    s = torch.linalg.svdvals(w0 - body.fc.weight.detach()) / (1e-2 * 0.2 * 16)
    assert s.min() > 0.4 and s.max() < 1.6


def test_state_dict_round_trip_and_a_clear_error_for_another_optimizer():
    model = create_model("mixer_nano", **TINY)
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.05)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    again = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.05)
    again.load_state_dict(opt.state_dict())
    p = model.blocks[0].mlp_channels.fc1.weight
    assert torch.equal(again.muon.state[p]["momentum_buffer"], opt.muon.state[p]["momentum_buffer"])
    again.param_groups[0]["lr"] = 0.25  # what a scheduler does after a resume
    assert again.muon.param_groups[0]["lr"] == 0.25
    adamw = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    with pytest.raises(ValueError, match="another --optimizer"):
        again.load_state_dict(adamw.state_dict())


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="'lamb'"):
        build_optimizer(torch.nn.Linear(2, 2), "lamb", lr=1e-3, weight_decay=0.0)


def test_a_torch_without_muon_gets_a_clear_error(monkeypatch):
    from mixerlab.errors import MixerlabError

    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(MixerlabError, match="needs torch >= 2.9.*--optimizer adamw"):
        build_optimizer(create_model("mixer_nano", **TINY), "muon", lr=1e-3, weight_decay=0.0)


def test_the_cli_offers_the_optimizers_and_refuses_others_before_loading_data(capsys):
    from mixerlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--optimizer", "lamb"])
    assert e.value.code == 2
    assert "invalid choice: 'lamb'" in capsys.readouterr().err


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_muon_equals_torch_muon_and_shares_its_state(nesterov):
    """Same-shape matrices orthogonalised in one batched product: the reference is torch's own
    Muon, one matrix at a time, fed the same gradients for several steps (with weight decay and
    the lr adjustment); the state dicts are interchangeable."""
    from mixerlab.training.muon import BatchedMuon

    torch.manual_seed(0)
    shapes = [(16, 49), (49, 16), (64, 32), (32, 64)] * 3 + [(7, 5)]
    ref = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    fast = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    kw = dict(lr=1e-2, weight_decay=0.05, momentum=0.95, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    o_ref, o_fast = torch.optim.Muon(ref, **kw), BatchedMuon(fast, **kw, ns_dtype=torch.bfloat16)
    for _ in range(4):
        for a, b in zip(ref, fast):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        o_ref.step()
        o_fast.step()
    for a, b in zip(ref, fast):
        # a batched product may round one bf16 element of an update (about 0.014 here) differently: 1e-4
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
        assert not torch.equal(a, a.detach() * 0)  # the parameters moved
    o_ref.load_state_dict(o_fast.state_dict())  # the same schema, both ways
    BatchedMuon(fast, **kw).load_state_dict(o_ref.state_dict())


def test_muon_iterates_in_fp32_where_bf16_is_emulated(monkeypatch):
    """On a CPU without native bf16 the Newton-Schulz iterations run in fp32 (bf16 products are
    emulated there and took most of the step); the result stays within bf16's rounding of torch's."""
    from mixerlab.training import muon

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert muon.iteration_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert muon.iteration_dtype(torch.device("cpu")) == torch.bfloat16
    g = torch.randn(3, 32, 64, generator=torch.Generator().manual_seed(0))
    args = ((3.4445, -4.7750, 2.0315), 5, 1e-7)
    exact = muon.newton_schulz(g, *args, dtype=torch.float32)
    rounded = muon.newton_schulz(g, *args, dtype=torch.bfloat16).float()
    assert exact.dtype == torch.float32
    torch.testing.assert_close(exact, rounded, rtol=0, atol=0.05)


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 3e-2)])
def test_compiled_training_step_matches_the_eager_step(precision, tol):
    """The fast step (torch.compile: fused GELU, LayerNorm, casts) against the plain one: the same
    loss, gradient norm and updated weights within the precision's tolerance."""
    import copy

    from mixerlab.training.config import TrainConfig
    from mixerlab.training.step import compile_for_training, train_step

    torch.manual_seed(0)
    model = create_model("mixer_nano", in_chans=1, img_size=28, num_classes=10, **TINY)
    torch.nn.init.normal_(model.head.weight, std=0.05)
    twin = copy.deepcopy(model)
    cfg = TrainConfig(optimizer="sgd", precision=precision, clip_grad=0.0, label_smoothing=0.1)
    batch = [(torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (32,)))]

    class KeepGradients(torch.optim.SGD):  # records the gradients the step hands the optimiser
        @torch.no_grad()
        def step(self, closure=None):
            self.grads = [p.grad.clone() for p in self.param_groups[0]["params"]]

    results = []
    for m, fast in ((model, False), (twin, True)):
        opt = KeepGradients(m.parameters(), lr=1.0)
        run = compile_for_training(m) if fast else m
        torch.manual_seed(1)
        loss, norm, _ = train_step(run, batch, opt, cfg, 10, torch.device("cpu"), precision)
        results.append((loss, norm, opt.grads))
    (loss, norm, grads), (loss_c, norm_c, grads_c) = results
    assert norm > 0 and abs(loss_c - loss) <= tol * abs(loss) and abs(norm_c - norm) <= tol * abs(norm)
    names = [n for n, _ in model.named_parameters()]
    for name, g, gc in zip(names, grads, grads_c, strict=True):
        torch.testing.assert_close(gc, g, rtol=tol, atol=tol * norm, msg=name)

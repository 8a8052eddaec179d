"""The Fashion-MNIST recipes (speedrun, best) and the speedrun's whitened stem."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.data.transforms import normalize
from mixerlab.errors import TrainingError
from mixerlab.training.whiten import EPS, whiten_stem


def test_whitened_stem_decorrelates_the_patches():
    """The first k stem filters map the training patches to uncorrelated features of variance
    eig / (eig + eps), the next k are their negatives, the rest keep their random init."""
    g = torch.Generator().manual_seed(0)
    # correlated images: smooth random fields, so the patch covariance is far from the identity
    base = torch.rand(500, 1, 7, 7, generator=g)
    images = (F.interpolate(base, size=(28, 28), mode="bilinear") * 255).round().to(torch.uint8)
    model = mixerlab.create_model("mixer_pico", patch_size=7, embed_dim=64, depth=1)
    before = model.stem.proj.weight.detach().clone()
    k = whiten_stem(model, images)
    assert k == 32
    w = model.stem.proj.weight.detach().reshape(64, -1)
    x = normalize(images, model.config.mean, model.config.std).float()
    patches = F.unfold(x, 7, stride=7).transpose(1, 2).reshape(-1, 49)
    patches = patches - patches.mean(0)
    feats = patches @ w[:k].T
    cov = feats.T @ feats / len(feats)
    eig = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)[:k]
    np.testing.assert_allclose(cov.numpy(), torch.diag(eig / (eig + EPS)).numpy(), atol=2e-3)
    assert torch.equal(w[k:2 * k], -w[:k])
    assert torch.equal(model.stem.proj.weight[2 * k:], before[2 * k:])
    assert torch.count_nonzero(model.stem.proj.bias) == 0


def test_whitening_needs_a_mixer_and_images_of_its_channels():
    vit = mixerlab.create_model("vit_nano")
    with pytest.raises(TrainingError, match="for MLP-Mixer models"):
        whiten_stem(vit, torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    mixer = mixerlab.create_model("mixer_pico", patch_size=7)
    with pytest.raises(TrainingError, match=r"images with the model's 1 channel\(s\); these have 3"):
        whiten_stem(mixer, torch.zeros(4, 3, 28, 28, dtype=torch.uint8))


def test_whitening_images_of_another_size_sees_them_as_the_step_does():
    """28 px images into a model that takes 25 px (--img-size 25): the covariance is that of the
    patches the step feeds, the images resized by data.transforms.prepare."""
    from mixerlab.data.transforms import prepare

    g = torch.Generator().manual_seed(1)
    base = torch.rand(300, 1, 7, 7, generator=g)
    images = (F.interpolate(base, size=(28, 28), mode="bilinear") * 255).to(torch.uint8)
    model = mixerlab.create_model("mixer_pico", img_size=25, patch_size=5, embed_dim=64, depth=1)
    k = whiten_stem(model, images)
    assert k == 25  # a 5x5 grey patch has 25 dimensions
    x = prepare(images, model, torch.device("cpu"))
    assert x.shape[-2:] == (25, 25)
    patches = F.unfold(x, 5, stride=5).transpose(1, 2).reshape(-1, 25)
    patches = patches - patches.mean(0)
    feats = patches @ model.stem.proj.weight.detach().reshape(64, -1)[:k].T
    eig = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)[:k]
    np.testing.assert_allclose((feats.T @ feats / len(feats)).numpy(), torch.diag(eig / (eig + EPS)).numpy(), atol=2e-3)


def test_the_speedrun_run_starts_from_the_whitened_stem(tmp_path):
    """The recipe's run as the trainer builds it: its model, the steps that fit its 60 s here, and a stem
    that is whiten_stem's of the training images (the first step would start from it, the steps
    measured for the budget having been undone), and the time that took, counted."""
    from mixerlab.training import distributed as dist_utils
    from mixerlab.training.loop import Run
    from mixerlab.training.recipes import resolve

    cfg = resolve("speedrun", out=str(tmp_path / "run"), quiet=True)
    assert (cfg.stem_init, cfg.epochs, cfg.flip, cfg.val_split, cfg.time_budget) == ("whiten", None, None, 0.0, 60)
    run = Run(cfg, tmp_path / "run", dist_utils.setup(cfg.device))
    assert run.model.config.patch_size == 7 and run.setup_seconds > 0
    assert run.cfg.max_steps >= 1 and run.cfg.epochs == -(-run.cfg.max_steps // run.steps_per_epoch)
    assert run.cfg.flip is (run.cfg.max_steps >= 2 * run.steps_per_epoch)  # under two epochs, no flips
    ref = mixerlab.create_model("mixer_pico", **cfg.model_args)
    whiten_stem(ref, run.data.train.images)
    # the leading filters (well-separated eigenvalues; further down, near-equal ones may rotate between two
    # covariance sums), and their negatives after all 49 (a 7x7 grey patch has 49 dimensions)
    w, r = run.model.stem.proj.weight.detach(), ref.stem.proj.weight.detach()
    assert torch.allclose(w[:8], r[:8], atol=1e-4) and torch.equal(w[49:57], -w[:8])


@pytest.mark.parametrize("recipe", ["speedrun", "best"])
def test_fashion_mnist_recipes_on_other_images_say_what_they_assume(tmp_path, capsys, recipe):
    for c in range(2):
        d = tmp_path / "photos" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((64, 64, 3), 40 * i + c, np.uint8)).save(d / f"{i}.png")
    assert cli(["train", "--recipe", recipe, "--data", str(tmp_path / "photos"), "--out",
                str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--recipe {recipe} is made for 28x28 grey images" in err and "3 x 64 x 64" in err
    assert "Use the default recipe (auto)" in err and not (tmp_path / "run").exists()

"""The speedrun recipe and its whitened stem."""

import json

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


def test_whitening_needs_a_mixer_and_images_of_its_size():
    vit = mixerlab.create_model("vit_nano")
    with pytest.raises(TrainingError, match="for MLP-Mixer models"):
        whiten_stem(vit, torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    mixer = mixerlab.create_model("mixer_pico", patch_size=7)
    with pytest.raises(TrainingError, match=r"at the model's input \(1 x 28 x 28\); these are \(3, 32, 32\)"):
        whiten_stem(mixer, torch.zeros(4, 3, 32, 32, dtype=torch.uint8))


def test_speedrun_trains_its_recipe_end_to_end(tmp_path):
    run = tmp_path / "run"
    assert cli(["train", "--recipe", "speedrun", "--max-steps-per-epoch", "3", "--out", str(run), "--quiet"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["stem_init"] == "whiten" and cfg["model"]["patch_size"] == 7
    assert json.loads((run / "summary.json").read_text())["selected_on"] == "last epoch"


def test_speedrun_on_other_images_says_what_it_assumes(tmp_path, capsys):
    for c in range(2):
        d = tmp_path / "photos" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((64, 64, 3), 40 * i + c, np.uint8)).save(d / f"{i}.png")
    assert cli(["train", "--recipe", "speedrun", "--data", str(tmp_path / "photos"), "--out",
                str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--recipe speedrun is made for 28x28 grey images" in err and "3 x 64 x 64" in err

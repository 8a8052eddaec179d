"""Random erasing, on whole batches (in memory) and on single images (streaming)."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mixerlab.cli import main as cli
from mixerlab.data.stream import train_transform
from mixerlab.data.transforms import BatchAugment, random_erase
from mixerlab.training.loop import train
from mixerlab.training.recipes import resolve

from .test_train import make_idx_dir, tiny_cfg


def _boxes(changed: torch.Tensor):
    """(B, H, W) bool -> per image the bounding box (y0, y1, x0, x1) of its changed pixels, or None."""
    out = []
    for m in changed:
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append(None if len(ys) == 0 else (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1))
    return out


def test_each_chosen_image_gets_one_rectangle_of_noise():
    x = torch.full((400, 3, 28, 28), 7, dtype=torch.uint8)
    y = random_erase(x.clone(), 1.0)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    changed = y != 7
    # one rectangle, the same in every channel: its box is almost all noise (a noise value may equal 7)
    for c in range(3):
        assert _boxes(changed[:, c]) == _boxes(changed.any(1))
    areas = []
    for i, box in enumerate(_boxes(changed.any(1))):
        assert box is not None
        y0, y1, x0, x1 = box
        inside = changed[i, 0, y0:y1, x0:x1]
        assert inside.float().mean() > 0.9
        areas.append((y1 - y0) * (x1 - x0) / (28 * 28))
    # torchvision's range of areas, 2% to a third, up to the rounding of the sides on a 28 px image
    assert 0.01 <= min(areas) and max(areas) <= 0.36
    assert np.mean(areas) == pytest.approx((0.02 + 1 / 3) / 2, abs=0.03)
    noise = y[changed].float()
    assert noise.mean().item() == pytest.approx(127.5, abs=3) and noise.min() == 0 and noise.max() == 255


def test_erasing_probability_and_its_off_switch():
    x = torch.full((2000, 1, 28, 28), 7, dtype=torch.uint8)
    hit = (random_erase(x, 0.25) != 7).flatten(1).any(1).float().mean().item()
    assert hit == pytest.approx(0.25, abs=0.04)
    assert random_erase(x, 0.0) is x
    assert torch.equal(BatchAugment()(x), x)  # nothing asked, nothing changed


def test_erasing_draws_from_torchs_generator():
    x = torch.full((16, 1, 28, 28), 7, dtype=torch.uint8)
    torch.manual_seed(3)
    a = BatchAugment(crop_pad=2, flip=True, random_erase=0.5)(x)
    torch.manual_seed(3)
    b = BatchAugment(crop_pad=2, flip=True, random_erase=0.5)(x)
    assert torch.equal(a, b)  # a resumed run redraws exactly what the first drew


def test_streaming_transform_erases_and_travels_to_workers():
    t = train_transform((28, 28), False, 0, 9, 1.0, random_erase=1.0)
    t = pickle.loads(pickle.dumps(t))  # DataLoader workers get it pickled under spawn
    im = Image.fromarray(np.full((28, 28), 7, np.uint8))
    y = t(im)
    assert y.shape == (1, 28, 28) and y.dtype == torch.uint8
    (y0, y1, x0, x1), = _boxes(y != 7)
    assert (y[0, y0:y1, x0:x1] != 7).float().mean() > 0.9


def test_random_erase_option_is_checked_and_reported(tmp_path, capsys, caplog):
    make_idx_dir(tmp_path / "mnist")
    assert cli(["train", "--data", "mnist", "--data-dir", str(tmp_path), "--random-erase", "1.5",
                "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "training option 'random_erase': 1.5 is not allowed; allowed: in [0, 1]" in err
    assert not (tmp_path / "r").exists()
    caplog.set_level("INFO", logger="mixerlab")
    train(tiny_cfg(tmp_path, "mnist", data_dir=str(tmp_path), random_erase=0.25, epochs=1, max_steps_per_epoch=2,
                   quiet=False))
    assert "random erasing 25% of images" in caplog.text
    assert resolve("best").random_erase > 0 and resolve("auto").random_erase == 0

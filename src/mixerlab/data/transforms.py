"""The input path: uint8 batches to normalised model input (`prepare`), and augmentation on whole
batches of uint8 tensors, on the training device.

Per-sample randomness (crop offsets, flips, RandAugment ops drawn per chunk, mixup pairs) comes from
torch's global generator, which the trainer seeds from (seed, step, rank): a resumed run draws exactly
what the uninterrupted run drew.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..errors import DataError
from .decode import MAX_PIXELS, decode_image, to_uint8_chw


def _per_channel(v: tuple[float, ...], x: torch.Tensor) -> float | torch.Tensor:
    return v[0] if len(v) == 1 else torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def normalize(x: torch.Tensor, mean: tuple[float, ...] = (0.5,), std: tuple[float, ...] = (0.5,),
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, (x / 255 - mean) / std per channel (0.5/0.5 gives [-1, 1], what
    the official code and timm's goog weights expect)."""
    x = x.to(dtype).div_(255.0)
    return x.sub_(_per_channel(mean, x)).div_(_per_channel(std, x))


def prepare(x: torch.Tensor, model: nn.Module, device: torch.device) -> torch.Tensor:
    """uint8 batch -> float on the device with the model's own normalisation (its config's mean and
    std); grey images are repeated for RGB models, RGB averaged for grey ones; other sizes resized."""
    cfg = model.config
    x = x.to(device, non_blocking=True)
    want = cfg.in_chans
    if x.shape[1] != want:
        if x.shape[1] == 1:
            x = x.expand(-1, want, -1, -1)
        elif want == 1 and x.shape[1] == 3:
            x = x.float().mean(dim=1, keepdim=True).round_().to(torch.uint8)
        else:
            raise DataError(f"the data has {x.shape[1]} channels, the model takes {want}")
    x = normalize(x, cfg.mean, cfg.std)
    size = tuple(model.config.img_size)
    if tuple(x.shape[-2:]) != size:  # e.g. 28 px data into a 224 px pre-trained model
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def eval_image(im: Image.Image, cfg) -> torch.Tensor:
    """One decoded image as the model's input, uint8 (C, H, W), by timm's eval transform and the
    model's own preprocessing: resize (its interpolation) so that the shorter side is input / crop_pct,
    then take the centre. With crop_pct 1 and an image of the input's shape this does nothing."""
    # imported here, not at the top: torchvision's import (which pulls in torch._dynamo) costs seconds
    # that commands which never resize a file (--help, training in memory, export) should not pay
    from torchvision.transforms.v2 import functional as TF

    h, w = cfg.img_size
    scale = (math.floor(h / cfg.crop_pct), math.floor(w / cfg.crop_pct))
    mode = TF.InterpolationMode(cfg.interpolation)
    if scale[0] == scale[1]:
        im = TF.resize(im, [scale[0]], interpolation=mode)  # the shorter side, as torchvision's Resize(int)
    else:
        k = max(scale[0] / im.height, scale[1] / im.width)
        im = TF.resize(im, [round(im.height * k), round(im.width * k)], interpolation=mode)
    im = TF.center_crop(im, [h, w])
    return torch.from_numpy(to_uint8_chw(im))


def image_for_model(source, cfg, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """A file path or the bytes of an image file as the model's uint8 input (C, H, W): decoded in the
    model's colour (decode.py) and resized and cropped as the model evaluates (`eval_image`)."""
    return eval_image(decode_image(source, cfg.in_chans if cfg.in_chans in (1, 3) else None, max_pixels), cfg)


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by `pad` pixels (zeros) and crop back at an independent random offset per image."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    rows = (oy + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(-1, x.shape[1], -1, w + 2 * pad)
    xp = torch.gather(xp, 2, rows)  # (B, C, H, W + 2p)
    cols = (ox + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(-1, x.shape[1], h, -1)
    return torch.gather(xp, 3, cols)


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    mask = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def random_erase(x: torch.Tensor, p: float, area: tuple[float, float] = (0.02, 1 / 3),
                 log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3))) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017), torchvision's ranges: with probability p an image gets one
    rectangle of `area` of its pixels, aspect ratio exp(U(log_ratio)), filled with uniform noise.

    Drawn for the whole batch at once: torchvision redraws a rectangle that does not fit up to 10
    times, one image at a time; here its sides are clipped to the image instead, so a tall thin draw
    becomes a full-height stripe."""
    if p <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device
    a = torch.empty(b, device=dev).uniform_(*area) * (h * w)
    r = torch.empty(b, device=dev).uniform_(*log_ratio).exp()
    eh = (a * r).sqrt().round().clamp_(1, h).long()
    ew = (a / r).sqrt().round().clamp_(1, w).long()
    y0 = (torch.rand(b, device=dev) * (h - eh + 1)).long()
    x0 = (torch.rand(b, device=dev) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1))
              & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1)))
    chosen = torch.rand(b, device=dev) < p
    mask = (inside & chosen.view(b, 1, 1)).unsqueeze(1)  # (B, 1, H, W)
    noise = torch.randint(0, 256, x.shape, dtype=torch.uint8, device=dev).to(x.dtype)
    return torch.where(mask, noise, x)


class BatchAugment:
    """crop + flip + RandAugment(n, m) + random erasing, all optional, on a uint8 batch; returns it uint8."""

    def __init__(self, crop_pad: int = 0, flip: bool = False, randaug_n: int = 0, randaug_m: int = 9,
                 random_erase: float = 0.0, chunk: int = 16):
        self.crop_pad, self.flip, self.erase, self.chunk = crop_pad, flip, random_erase, chunk
        if randaug_n > 0:
            from torchvision.transforms import v2
        self.randaug = v2.RandAugment(num_ops=randaug_n, magnitude=randaug_m) if randaug_n > 0 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = random_crop(x, self.crop_pad)
        if self.flip:
            x = random_flip(x)
        if self.randaug is not None:
            # RandAugment draws its ops once per call: call it per chunk so images get different ops.
            x = torch.cat([self.randaug(c) for c in x.split(self.chunk)])
        return random_erase(x, self.erase)  # last, as torchvision's and timm's pipelines place it


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return t.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each image with its neighbour in the batch by one Beta(alpha, alpha) weight."""
    if alpha <= 0:
        return x, targets
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return lam * x + (1 - lam) * x.roll(1, 0), lam * targets + (1 - lam) * targets.roll(1, 0)

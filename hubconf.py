"""torch.hub entry points: every registered mixerlab model, from this repository, without installing it.

    model = torch.hub.load("path/to/mixerlab", "mixer_b16_224", source="local", pretrained="Mixer-B_16.npz")
    model = torch.hub.load("path/to/mixerlab", "from_pretrained", "runs/demo", source="local")

`pretrained` is False (random weights, the paper's initialisation) or a local path to anything
`mixerlab.from_pretrained` reads: an official .npz, a timm checkpoint or Hub folder, a mixerlab folder
or run. Nothing is downloaded. Other keyword arguments are `mixerlab.create_model`'s (num_classes,
img_size, ...).
"""

import os
import sys

dependencies = ["torch", "torchvision", "numpy", "safetensors"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

import mixerlab as _mixerlab  # noqa: E402


def _entry(name):
    def load(pretrained=False, **kwargs):
        if pretrained is True:
            raise ValueError(f"{name}: these entry points download nothing; pass pretrained=PATH (an official .npz "
                             "such as Mixer-B_16.npz, a timm checkpoint or Hub folder, or a mixerlab folder or run)")
        return _mixerlab.create_model(name, pretrained=pretrained or None, **kwargs)

    load.__name__ = load.__qualname__ = name
    cfg = _mixerlab.get_config(name)
    load.__doc__ = (f"{name}: {cfg.arch}, patch {cfg.patch_size}, width {cfg.embed_dim}, {cfg.depth} layers, "
                    f"{cfg.img_size[0]} px. pretrained: False or a local weights path.")
    return load


for _name in _mixerlab.list_models():
    globals()[_name] = _entry(_name)


def from_pretrained(src, **kwargs):
    """Any checkpoint mixerlab reads (a path), as its model: mixerlab.from_pretrained(src, **kwargs)."""
    return _mixerlab.from_pretrained(src, **kwargs)

"""Weights in every format users bring: official Flax npz, timm, our own folders and training runs,
and the resolution change of paper Appendix C. Builds on `mixerlab.models`; never imported by it."""

from ..models.resize import resize_token_mixing
from .load import create_model, from_pretrained
from .official import save_official
from .timm import save_timm

__all__ = ["create_model", "from_pretrained", "resize_token_mixing", "save_official", "save_timm"]

"""mixerlab: MLP-Mixer (Tolstikhin et al., 2021) in PyTorch."""

from .errors import CheckpointError, DataError, MixerlabError
from .models.config import MixerConfig, ViTConfig, config_from_dict
from .models.flops import count_flops, count_macs, count_params
from .models.mixer import MlpMixer
from .models.registry import create_model, get_config, list_models, model_from_config
from .models.vit import VisionTransformer
from .perf.allocator import tune_cpu_allocator
from .perf.inference import optimize_for_inference
from .weights.hub import from_pretrained, save_pretrained, save_timm
from .weights.official import save_official
from .weights.resize import resize_token_mixing

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataError",
    "MixerConfig",
    "MixerlabError",
    "MlpMixer",
    "ViTConfig",
    "VisionTransformer",
    "config_from_dict",
    "count_flops",
    "count_macs",
    "count_params",
    "create_model",
    "from_pretrained",
    "get_config",
    "list_models",
    "model_from_config",
    "optimize_for_inference",
    "resize_token_mixing",
    "save_official",
    "save_pretrained",
    "save_timm",
    "tune_cpu_allocator",
]

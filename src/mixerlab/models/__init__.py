"""The models and what defines them: configs, layers, the Mixer, the ViT baseline, the registry and
the cost model. Imports nothing from the rest of mixerlab but `errors` and `io_utils`."""

from .config import MixerConfig, ViTConfig, config_from_dict
from .flops import count_flops, count_macs, count_params
from .mixer import MlpMixer
from .registry import get_config, list_models, model_from_config
from .serialization import save_pretrained
from .vit import VisionTransformer

__all__ = ["MixerConfig", "MlpMixer", "ViTConfig", "VisionTransformer", "config_from_dict", "count_flops",
           "count_macs", "count_params", "get_config", "list_models", "model_from_config",
           "save_pretrained"]

"""mixerlab: MLP-Mixer (Tolstikhin et al., 2021) in PyTorch.

The public API. The package's rooms, in the order imports run (each imports only from those after it):
cli -> tasks (training, evaluate, predict, perf.bench) -> weights, data, perf (runtime, inference) ->
models -> models.layers; `errors` and `io_utils` serve all of them. Nothing inside imports this file.
"""

from .errors import CheckpointError, ConfigError, DataError, MixerlabError, TrainingError
from .export.runtime import load_exported
from .features.embed import embed, read_embedding
from .features.fewshot import fewshot
from .features.knn import knn
from .models.config import MixerConfig, ViTConfig, config_from_dict
from .models.flops import count_flops, count_macs, count_params
from .models.mixer import MlpMixer
from .models.registry import get_config, list_models, model_from_config
from .models.resize import resize_token_mixing
from .models.serialization import save_pretrained
from .models.vit import VisionTransformer
from .perf.allocator import tune_cpu_allocator
from .perf.inference import optimize_for_inference
from .weights.hub import push as push_to_hub
from .weights.hub import save_hub
from .weights.load import create_model, from_pretrained
from .weights.official import save_official
from .weights.timm import save_timm

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MixerConfig",
    "MixerlabError",
    "MlpMixer",
    "TrainingError",
    "ViTConfig",
    "VisionTransformer",
    "config_from_dict",
    "count_flops",
    "count_macs",
    "count_params",
    "create_model",
    "embed",
    "fewshot",
    "from_pretrained",
    "get_config",
    "knn",
    "list_models",
    "model_from_config",
    "optimize_for_inference",
    "load_exported",
    "push_to_hub",
    "read_embedding",
    "resize_token_mixing",
    "save_hub",
    "save_official",
    "save_pretrained",
    "save_timm",
    "tune_cpu_allocator",
]

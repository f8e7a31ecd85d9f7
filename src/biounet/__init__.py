"""biounet: the U-Net of Ronneberger, Fischer and Brox (MICCAI 2015) for microscopy.

Public API (re-exported names only)::

    from biounet import UNet, get_preset, train, predict, segment, evaluate, InferenceConfig
"""

from .checkpoint import export_model, load_checkpoint, model_from_checkpoint
from .config import AugmentConfig, InferenceConfig, PredictOptions, Preset, TrainConfig
from .errors import InputError
from .evaluate import Evaluation, evaluate
from .instances import instances
from .io import read_images, read_instances, read_masks
from .model import (
    ModelConfig,
    UNet,
    border,
    count_parameters,
    min_input_size,
    nearest_valid_input_size,
    output_size,
    valid_input_size,
)
from .presets import PRESETS, get_preset
from .segment import Segmentation, segment, segment_files
from .tiling import predict
from .train import train
from .version import __version__
from .weights import weight_map

__all__ = [
    "AugmentConfig",
    "Evaluation",
    "InferenceConfig",
    "InputError",
    "ModelConfig",
    "PRESETS",
    "PredictOptions",
    "Preset",
    "Segmentation",
    "TrainConfig",
    "UNet",
    "border",
    "count_parameters",
    "evaluate",
    "export_model",
    "get_preset",
    "instances",
    "load_checkpoint",
    "min_input_size",
    "model_from_checkpoint",
    "nearest_valid_input_size",
    "output_size",
    "predict",
    "read_images",
    "read_instances",
    "read_masks",
    "segment",
    "segment_files",
    "train",
    "valid_input_size",
    "__version__",
    "weight_map",
]

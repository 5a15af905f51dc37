"""models stage: the architectures (models.base.RatingModel subclasses), encoders and heads (created by
name from registries), weight sources.

Importing this package registers every architecture (MODEL_ARCHS, selected by `model.arch`: one module each,
imported here, plus the modules of the folders in $EFFIMINIVLM_ARCH_PATH), encoder and head.
"""

from effiminivlm.models import clip_fusion, cross_attention, hybrid, latent_query, minivitex, smolvlm  # noqa: F401
from effiminivlm.models.archs import MODEL_ARCHS, get_arch, load_arch_path, load_env_archs, register_arch
from effiminivlm.models.base import RatingModel
from effiminivlm.models.factory import create_model, create_tokenizer, create_transforms, load_model
from effiminivlm.models.heads import HEADS, create_head
from effiminivlm.models.image_encoders import (
    IMAGE_DATA_CONFIGS,
    IMAGE_ENCODERS,
    ImageDataConfig,
    create_image_encoder,
    image_data_config,
    resolve_image_input,
)
from effiminivlm.models.processor import Processor
from effiminivlm.models.regressor import EffiMiniVLM, read_model_config
from effiminivlm.models.text_encoders import TEXT_ENCODERS, create_text_encoder

__all__ = [
    "HEADS",
    "IMAGE_DATA_CONFIGS",
    "IMAGE_ENCODERS",
    "MODEL_ARCHS",
    "TEXT_ENCODERS",
    "EffiMiniVLM",
    "ImageDataConfig",
    "Processor",
    "RatingModel",
    "create_head",
    "load_arch_path",
    "register_arch",
    "create_image_encoder",
    "create_model",
    "create_text_encoder",
    "create_tokenizer",
    "create_transforms",
    "get_arch",
    "image_data_config",
    "load_model",
    "read_model_config",
    "resolve_image_input",
]

load_env_archs()  # after the built-in ones: a path module imports `register_arch` from this package

"""models stage: EffiMiniVLM, its encoders and heads (created by name from registries), weight sources.

Importing this package registers every encoder and head.
"""

from effiminivlm.models.factory import create_model, create_tokenizer, create_transforms, load_model
from effiminivlm.models.heads import HEADS, create_head
from effiminivlm.models.image_encoders import IMAGE_ENCODERS, create_image_encoder
from effiminivlm.models.regressor import EffiMiniVLM, read_model_config
from effiminivlm.models.text_encoders import TEXT_ENCODERS, create_text_encoder

__all__ = [
    "HEADS",
    "IMAGE_ENCODERS",
    "TEXT_ENCODERS",
    "EffiMiniVLM",
    "create_head",
    "create_image_encoder",
    "create_model",
    "create_text_encoder",
    "create_tokenizer",
    "create_transforms",
    "load_model",
    "read_model_config",
]

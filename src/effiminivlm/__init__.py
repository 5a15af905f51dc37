"""effiminivlm: efficient multimodal product-quality scoring.

EffiMiniVLM (an EfficientNet image tower + a MiniLM text tower + an MLP head regressing `average_rating`)
and the LoViF 2026 efficiency protocol (params, FLOPs, resource cost C, efficiency E, CES).
"""

from effiminivlm.config import Recipe, list_recipes, load_recipe

__version__ = "0.1.0"
__all__ = ["Recipe", "list_recipes", "load_recipe", "__version__"]

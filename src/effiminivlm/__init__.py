"""effiminivlm: efficient multimodal product-quality scoring.

EffiMiniVLM (an EfficientNet image tower + a MiniLM text tower + an MLP head regressing `average_rating`)
and the LoViF 2026 efficiency protocol (params, FLOPs, resource cost C, efficiency E, CES).

    import effiminivlm as ev
    model = ev.create_model(ev.load_recipe("offline").model)    # build by recipe
    scorer = ev.create_scorer("runs/demo/model")                 # score products with a trained model
"""

from effiminivlm.config import Recipe, list_recipes, load_recipe

__version__ = "0.1.0"
__all__ = ["Recipe", "create_model", "create_scorer", "list_recipes", "load_model", "load_recipe",
           "__version__"]


def __getattr__(name: str):  # lazy: `import effiminivlm` stays fast and torch-free until a model is needed
    if name in ("create_model", "load_model"):
        from effiminivlm.models import factory

        return getattr(factory, name)
    if name == "create_scorer":
        from effiminivlm.serving.scorer import create_scorer

        return create_scorer
    raise AttributeError(f"module 'effiminivlm' has no attribute {name!r}")

"""The report's precision-variant rows: which towers get which rows, and the twins they run."""

from __future__ import annotations

from pathlib import Path

import torch

from effiminivlm.bench import variants
from effiminivlm.config import load_recipe
from effiminivlm.models.factory import create_model
from effiminivlm.models.quantize import TowerVariant


def _model(recipe_overrides: list[str] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(load_recipe("tiny", recipe_overrides or []).model, pretrained=False)


def test_rows_follow_the_cpu_and_the_stored_graphs(monkeypatch) -> None:
    model = _model()
    monkeypatch.setattr(variants, "native_precision", lambda p: "fp32")  # a CPU without native bf16
    rows = variants.variant_models(model)
    assert [n for n, _ in rows] == ["variant: every tower fp32"]
    assert rows[0][1].fast_variants == {"image": variants.FP32, "text": variants.FP32}
    int8 = TowerVariant("int8", Path("fast/text-int8.xml"))
    model.fast_variants = {"image": variants.FP32, "text": int8}  # what quantize stored
    monkeypatch.setattr(variants, "native_precision", lambda p: p)  # a CPU with native bf16 (AMX)
    rows = dict(variants.variant_models(model))
    assert list(rows) == ["variant: every tower fp32", "variant: image tower bf16",
                          "variant: text tower bf16", "variant: text tower int8"]
    assert rows["variant: text tower int8"].fast_variants == {"image": variants.FP32, "text": int8}
    assert rows["variant: image tower bf16"].fast_variants["image"] == TowerVariant("bf16")
    twin = rows["variant: text tower bf16"]
    assert twin.text_encoder is model.text_encoder and model.fast_variants["text"] is int8  # shared modules


def test_a_text_only_model_gets_text_rows_only(monkeypatch) -> None:
    monkeypatch.setattr(variants, "native_precision", lambda p: p)
    model = _model()
    model.image_encoder = None
    assert [n for n, _ in variants.variant_models(model)] == ["variant: every tower fp32",
                                                            "variant: text tower bf16"]

"""The terminal tables of `profile`, `score` and `benchmark` (rich), rendered to text."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from effiminivlm.cli.tables import render_profile, render_score
from effiminivlm.protocol.formulas import ProtocolCfg, efficiency, protocol_score


def _render(renderable) -> str:
    console = Console(record=True, width=140)
    console.print(renderable)
    return console.export_text()


def test_render_score_shows_every_number() -> None:
    s = protocol_score(152.12, 31.14, 0.41)
    result = {"submission": "sub.csv", "truth": "truth.csv", "n_items": 1234, **s.to_dict(),
              "leaderboard_rank": 3, "rank_note": None, "min_items_for_rank": 30, "warnings": [],
              "protocol": ProtocolCfg().to_dict()}
    text = _render(render_score(result))
    for expected in ("sub.csv", "truth.csv", "1,234", "152.12", "31.14", f"{s.c:.4f}", f"{s.e:.4f}",
                     f"{s.ces:.4f}", "would rank #3 of 10"):  # 10 = the 9 ranked rows + this one
        assert expected in text
    assert "warning" not in text
    undefined = protocol_score(152.12, 31.14, math.nan)
    text = " ".join(_render(render_score({**result, **undefined.to_dict(), "leaderboard_rank": None,
                                          "rank_note": "no rank: fewer than 30 items",
                                          "warnings": ["PLCC is undefined: x"]})).split())
    assert "PLCC undefined (constant predictions): PLCC+ and CES count as 0" in text
    assert "would rank" not in text and "no rank: fewer than 30 items" in text
    assert "warning: PLCC is undefined: x" in text


def test_render_profile_warns_about_uncounted_ops() -> None:
    from effiminivlm.config import load_recipe
    from effiminivlm.models.factory import create_model
    from effiminivlm.protocol.profile import profile_model, with_plcc

    p = profile_model(create_model(load_recipe("tiny").model, pretrained=False), mean_tokens=30, label="tiny")
    text = _render(render_profile(with_plcc(p, 0.2, "--plcc")))
    for expected in ("tiny", "image_encoder", "text_encoder", "head", f"{p.params_m:.3f}", f"{p.flops_g:.3f}",
                     "GFLOPs at 30 tokens", f"{p.c:.4f}", "capped at 1.10", f"{0.2 * p.e:.4f}", p.method,
                     "64x64 image", "64 tokens"):
        assert expected in text, expected
    assert "WARNING" not in text
    p.uncounted_ops["aten.conv_tbc"] = 2
    assert "WARNING: ops with a cost but no FLOP formula ran and are NOT counted: aten.conv_tbc (x2)" in \
        _render(render_profile(p)).replace("\n", " ")


@pytest.mark.parametrize("c, phrase", [(0.05, "capped at"), (0.5, "1 + 0.05 ln(1/C)"), (3.0, "penalty")])
def test_render_profile_names_the_branch_of_e(c: float, phrase: str) -> None:
    from effiminivlm.protocol.profile import ModelProfile

    fields = {f: None for f in ModelProfile.__dataclass_fields__}
    p = ModelProfile(**{**fields, "label": "x", "params": 1, "params_m": 1e-6, "trainable_m": 1e-6,
                        "flops": 1, "flops_g": 1e-9, "modalities": "image_text", "params_by_module_m": {},
                        "flops_by_module_g": {}, "flops_by_op_g": {}, "flops_by_module_op": {},
                        "attention_g": 0.0, "c": c, "e": efficiency(c), "method": "m", "uncounted_ops": {},
                        "protocol": ProtocolCfg().to_dict()})
    assert phrase in _render(render_profile(p))

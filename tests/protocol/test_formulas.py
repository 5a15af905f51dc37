"""The LoViF 2026 protocol formulas: the published leaderboard reproduced row by row, E's shape, the rank."""

from __future__ import annotations

import math

import numpy as np
import pytest

from effiminivlm.protocol.formulas import (
    PENALTIES,
    ProtocolCfg,
    cap_cost,
    efficiency,
    leaderboard_rank,
    load_leaderboard,
    plcc_for_ces,
    plcc_plus,
    protocol_score,
    ranked_count,
    resource_cost,
)

LEADERBOARD = load_leaderboard()


def test_leaderboard_is_the_published_table() -> None:
    assert [e.team for e in LEADERBOARD] == ["olacnqoddchl", "iamxredz", "wleach", "yinloonkhor", "ps3336",
                                             "skywalker5165", "monkeydminh49", "atul-dev342", "Shubhojit",
                                             "Hope"]
    assert {e.team: e.model for e in LEADERBOARD}["yinloonkhor"] == "EffiMiniVLM"
    assert [e.ces for e in LEADERBOARD] == sorted((e.ces for e in LEADERBOARD), reverse=True)
    ranks = {e.team: e.rank for e in LEADERBOARD}
    wleach = next(e for e in LEADERBOARD if e.team == "wleach")
    assert ranks["wleach"] is None and not wleach.ranked and "baseline" in (wleach.note or "")
    assert [e.rank for e in LEADERBOARD if e.ranked] == list(range(1, 10)) and ranked_count() == 9
    assert ranks["ps3336"] == 4 and ranks["skywalker5165"] == 5


def test_skywalker_has_the_numbers_of_ps3336() -> None:
    by_team = {e.team: e for e in LEADERBOARD}
    fields = ("params_m", "flops_g", "plcc", "c", "e", "ces")
    assert [getattr(by_team["skywalker5165"], f) for f in fields] == [getattr(by_team["ps3336"], f)
                                                                      for f in fields]


@pytest.mark.parametrize("entry", LEADERBOARD, ids=lambda e: e.team)
def test_every_leaderboard_row_is_reproduced(entry) -> None:
    s = protocol_score(entry.params_m, entry.flops_g, entry.plcc)
    assert round(s.c, 2) == pytest.approx(entry.c, abs=1e-9)
    assert round(s.e, 2) == pytest.approx(entry.e, abs=1e-9)
    assert abs(s.ces - entry.ces) <= 0.01 + 1e-9  # the published PLCC is rounded to two decimals


def test_rounded_plcc_explains_the_ces_gaps() -> None:
    by_team = {e.team: e for e in LEADERBOARD}
    olac, wleach = by_team["olacnqoddchl"], by_team["wleach"]
    assert round(protocol_score(olac.params_m, olac.flops_g, olac.plcc).ces, 3) == 0.425  # published: 0.43
    assert round(protocol_score(wleach.params_m, wleach.flops_g, wleach.plcc).ces, 3) == 0.393  # 0.40


def test_only_the_log_form_fits_the_leaderboard() -> None:
    """The docstring's claim: a linear E (1 + 0.05 (1 - C)) misses published rows, the log form does not."""
    linear_misses = [e.team for e in LEADERBOARD
                     if round(min(1 + 0.05 * (1 - resource_cost(e.params_m, e.flops_g)), 1.1), 2) != e.e]
    assert "yinloonkhor" in linear_misses and "olacnqoddchl" in linear_misses


def test_effiminivlm_paper_figures() -> None:
    s = protocol_score(27.7, 6.8)
    assert s.c == pytest.approx(0.097, abs=5e-4)
    assert s.e == pytest.approx(1.10)


def test_efficiency_shape() -> None:
    assert efficiency(1.0) == pytest.approx(1.0)
    assert efficiency(1.0 + 1e-9) == pytest.approx(1.0, abs=1e-6)  # continuous at the targets
    assert efficiency(math.e) == pytest.approx(1 / 3)  # 1 / (1 + beta ln e), beta = 2
    assert efficiency(0.01) == efficiency(cap_cost()) == pytest.approx(1.10)  # cap 1 + gamma
    assert cap_cost() == pytest.approx(math.exp(-2))  # exp(-gamma / alpha)
    cs = np.geomspace(0.05, 20, 50)
    es = [efficiency(c) for c in cs]
    assert all(a >= b for a, b in zip(es, es[1:], strict=False))  # never rewards a dearer model
    assert resource_cost(1000, 20) == pytest.approx(1.0)


def test_protocol_cfg_parameters_are_used() -> None:
    cfg = ProtocolCfg(params_target_m=100, flops_target_g=10, params_weight=1.0, flops_weight=0.0,
                      alpha=0.1, beta=1.0, gamma=0.5)
    assert resource_cost(50, 999, cfg) == pytest.approx(0.5)
    assert efficiency(0.5, cfg) == pytest.approx(1 + 0.1 * math.log(2))
    assert efficiency(1e-9, cfg) == pytest.approx(1.5)  # the cap is 1 + gamma
    assert efficiency(math.e, cfg) == pytest.approx(0.5)  # 1 / (1 + beta ln e)
    assert plcc_for_ces(0.4, 0.5, cfg) * efficiency(0.5, cfg) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="beta"):
        ProtocolCfg(beta=0)
    with pytest.raises(ValueError, match="gamma"):
        ProtocolCfg(gamma=-0.1)
    with pytest.raises(ValueError, match="params_target_m"):
        ProtocolCfg(params_target_m=0)


def test_report_names_and_the_penalty_form() -> None:
    """alpha = reward slope, beta = penalty slope, gamma = cap over 1; only the reference penalty is known."""
    cfg = ProtocolCfg()
    assert (cfg.alpha, cfg.beta, cfg.gamma, cfg.penalty) == (0.05, 2.0, 0.10, "reference")
    assert cfg.e_cap == pytest.approx(1.10)
    assert list(PENALTIES) == ["reference"]
    with pytest.raises(ValueError, match="penalty must be one of reference"):
        ProtocolCfg(penalty="report")


def test_plcc_plus_and_bad_inputs() -> None:
    assert plcc_plus(-0.3) == 0.0
    assert plcc_plus(float("nan")) == 0.0  # as the reference scorer: 0, not undefined
    s = protocol_score(27.7, 6.8, -0.2)
    assert s.plcc_plus == 0.0 and s.ces == 0.0 and s.plcc_defined
    constant = protocol_score(27.7, 6.8, float("nan"))
    assert constant.plcc_plus == 0.0 and constant.ces == 0.0 and constant.plcc_defined is False
    assert math.isnan(constant.plcc)
    with pytest.raises(ValueError, match="PLCC"):
        protocol_score(27.7, 6.8, 1.5)
    with pytest.raises(ValueError, match="params"):
        resource_cost(0, 6.8)
    with pytest.raises(ValueError, match="FLOPs"):
        resource_cost(27.7, float("inf"))


# ------------------------------------------------------------------------------------ rank, report, JSON


def test_leaderboard_rank() -> None:
    assert leaderboard_rank(0.5) == 1
    assert leaderboard_rank(0.0) == ranked_count() + 1 == len(LEADERBOARD)  # wleach does not count
    assert leaderboard_rank(0.396) == 4  # rounds to 0.40: after yinloonkhor (3); unranked wleach ignored
    assert leaderboard_rank(0.41) == 3
    assert leaderboard_rank(0.38) == 6  # below ps3336 (4) and skywalker5165 (5)
    assert leaderboard_rank(float("nan")) is None

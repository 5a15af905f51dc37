"""The isolated-op ceiling of `bench.peak`: which calls it times, how often, and the rate it implies."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from effiminivlm.bench.peak import isolated_ops, op_breakdown
from effiminivlm.protocol.flops import count_flops


class _Block(nn.Module):
    """Two same-shaped linears, a different one, attention and the elementwise ops a transformer adds."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(128, 128), nn.Linear(128, 128), nn.Linear(128, 64)
        self.norm = nn.LayerNorm(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.b(self.a(x))))  # [2, 64, 128]
        q = h.view(2, 64, 4, 32).transpose(1, 2)  # 4 heads of 32
        att = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(2, 64, 128)
        return self.c(att + h)


def test_isolated_ops_counts_each_distinct_product_and_attention_call():
    torch.manual_seed(0)
    ops = isolated_ops(_Block().eval(), (torch.randn(2, 64, 128),), torch.device("cpu"), repeats=2)
    got = {(o.op.split(".")[0], tuple(map(tuple, o.shapes))): o for o in ops}
    square = ("linear", ((2, 64, 128), (128, 128), (128,)))
    assert set(got) == {square, ("linear", ((2, 64, 128), (64, 128), (64,))),
                        ("scaled_dot_product_attention", ((2, 4, 64, 32),) * 3)}
    assert got[square].calls == 2  # a and b share their shapes: one entry
    assert [o.kind for o in ops].count("attention") == 1 and all(o.seconds > 0 for o in ops)


def test_op_breakdown_ceiling_is_the_flops_over_the_isolated_time():
    torch.manual_seed(0)
    block, x = _Block().eval(), (torch.randn(2, 64, 128),)
    bd = op_breakdown(block, block, x, torch.device("cpu"), "fp32")
    total_ms = bd["alone_matmul_ms"] + bd["alone_attention_ms"]
    assert bd["alone_matmul_ms"] > 0 and bd["alone_attention_ms"] > 0
    expected = count_flops(block, x).total / 1e9 / (total_ms / 1e3)
    # rounding only: the ceiling is reported to 0.1 GFLOP/s (a loaded machine can take it below 1)
    assert bd["ceiling_gflop_per_s"] == pytest.approx(expected, rel=0.01, abs=0.06)

"""The isolated-op ceiling of `protocol.peak`: which calls it times, how often, and the rate it implies."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from effiminivlm.protocol.flops import count_flops
from effiminivlm.protocol.peak import isolated_ops, op_breakdown


class _Block(nn.Module):
    """Two same-shaped linears, a different one, attention and the elementwise ops a transformer adds."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.b(self.a(x))))  # [2, 6, 8]
        q = h.view(2, 6, 2, 4).transpose(1, 2)  # 2 heads of 4
        att = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(2, 6, 8)
        return self.c(att + h)


def test_isolated_ops_counts_each_distinct_product_and_attention_call():
    torch.manual_seed(0)
    ops = isolated_ops(_Block().eval(), (torch.randn(2, 6, 8),), torch.device("cpu"), repeats=2)
    got = {(o.op.split(".")[0], tuple(map(tuple, o.shapes))): o for o in ops}
    assert set(got) == {("linear", ((2, 6, 8), (8, 8), (8,))), ("linear", ((2, 6, 8), (4, 8), (4,))),
                        ("scaled_dot_product_attention", ((2, 2, 6, 4),) * 3)}
    assert got[("linear", ((2, 6, 8), (8, 8), (8,)))].calls == 2  # a and b share their shapes: one entry
    assert [o.kind for o in ops].count("attention") == 1 and all(o.seconds > 0 for o in ops)


def test_op_breakdown_ceiling_is_the_flops_over_the_isolated_time():
    torch.manual_seed(0)
    block, x = _Block().eval(), (torch.randn(2, 6, 8),)
    bd = op_breakdown(block, block, x, torch.device("cpu"), "fp32")
    total_ms = bd["alone_matmul_ms"] + bd["alone_attention_ms"]
    assert bd["alone_matmul_ms"] > 0 and bd["alone_attention_ms"] > 0
    expected = count_flops(block, x).total / 1e9 / (total_ms / 1e3)
    assert bd["ceiling_gflop_per_s"] == pytest.approx(expected, rel=0.02, abs=0.05)

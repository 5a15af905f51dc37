"""Regression heads, created by name: fused features ``[B, in_dim] -> [B, 1]``."""

from __future__ import annotations

from torch import nn

from effiminivlm.config import HeadCfg
from effiminivlm.registry import Registry

HEADS: Registry = Registry("head")


class MLPHead(nn.Sequential):
    """The paper's head: per hidden size Linear-LayerNorm-GELU-Dropout, then Linear(., 1).

    With hidden_dims [512, 256] on the 1664-d [image; text] vector this is
    Linear(1664,512)-LN-GELU-Drop(0.1)-Linear(512,256)-LN-GELU-Drop(0.1)-Linear(256,1).
    """

    def __init__(self, in_dim: int, hidden_dims: list[int], dropout: float = 0.1) -> None:
        layers: list[nn.Module] = []
        for dim in hidden_dims:
            layers += [nn.Linear(in_dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout)]
            in_dim = dim
        layers.append(nn.Linear(in_dim, 1))
        super().__init__(*layers)


@HEADS.register("mlp")
def mlp(in_dim: int, hidden_dims: list[int], dropout: float = 0.1) -> MLPHead:
    return MLPHead(in_dim, hidden_dims, dropout)


def create_head(cfg: HeadCfg, in_dim: int) -> nn.Module:
    """Build `cfg.name` for an input of `in_dim` features."""
    return HEADS.build(cfg.name, in_dim=in_dim, hidden_dims=list(cfg.hidden_dims), dropout=cfg.dropout)

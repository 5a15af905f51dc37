"""Parameters and FLOPs as the LoViF 2026 protocol counts them, with a per-module breakdown.

Why our own wrapper around `torch.utils.flop_counter.FlopCounterMode`: the public tools disagree on the
same model. torch's counter registers attention only for the CUDA kernels (flash / efficient / cudnn), so on
a CPU the fused ``aten._scaled_dot_product_flash_attention_for_cpu`` that every Hugging Face BERT runs
through costs zero FLOPs; nn.MultiheadAttention / nn.TransformerEncoder in eval mode take a "fast path"
(``aten._native_multi_head_attention``, ``aten._transformer_encoder_layer_fwd``) that hides every matmul;
fvcore counts one FLOP per multiply-add, half the protocol's convention. The rules here:

- FLOPs = one forward pass of the canonical input (batch 1, the recipe's image size, text padded/truncated
  to ``max_length`` with every token attended), 2 FLOPs per multiply-add, attention (QK^T and AV) counted.
- `EXTRA_FLOP_FORMULAS` adds the CPU attention kernels and the matrix-vector ops torch leaves out, through
  FlopCounterMode's ``custom_mapping``; the MHA fast path is switched off while counting (same maths, in
  ops the counter sees).
- No silent fallback: every op that ran is recorded, and an op with a known cost (a matmul, convolution,
  attention, RNN, FFT, distance or solver kernel, or any op outside aten whose cost we cannot know) that
  no formula covered is reported in ``uncounted_ops``; `profile` prints it as a warning.
- Params = every parameter, frozen ones included (trainable reported separately).
Softmax, normalisation, activations and bias adds are not counted, by the convention of torch, fvcore and
the leaderboard (they are a few percent of a transformer's multiply-adds).

`protocol.profile.profile_model` applies these rules to an EffiMiniVLM and adds C and E.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, addmm_flop, bmm_flop, flop_registry

aten = torch.ops.aten

#: How FLOPs are counted; printed beside every number so two reports can be compared.
FLOP_METHOD = "torch.utils.flop_counter, 2 FLOPs/MAC, SDPA counted"


def _attention_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    """QK^T and AV for q [..., L, E], k [..., S, E], v [..., S, Ev] (heads and batch in the leading dims).

    Written for any number of leading dims (and grouped-query KV with fewer heads, which the kernel
    broadcasts to the query's heads), not only torch's 4-D case.
    """
    *lead, length, e = query_shape
    s, ev = key_shape[-2], value_shape[-1]
    return 2 * math.prod(lead) * length * s * (e + ev)


def _mv_flop(mat_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * mat_shape[0] * mat_shape[1]


#: Ops with a known cost that torch's registry misses, as FlopCounterMode `custom_mapping` entries (each
#: gets the shapes of the op's arguments, in order, and ``out_shape``).
EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_flop,
    aten._scaled_dot_product_fused_attention_overrideable: _attention_flop,
    aten._scaled_dot_product_attention_math_for_mps: _attention_flop,
    aten._addmm_activation: lambda s, a, b, *args, **kw: addmm_flop(s, a, b),
    aten.addmv: lambda s, m, *args, **kw: _mv_flop(m),
    aten.mv: _mv_flop,
    aten.dot: lambda a, *args, **kw: 2 * a[0],
    aten.vdot: lambda a, *args, **kw: 2 * a[0],
    aten.addbmm: lambda s, b1, b2, *args, **kw: bmm_flop(b1, b2),
}

#: Name pieces (an op's name split at "_") of kernels that multiply-add: such an op running with no formula
#: means the count is incomplete. Whole pieces, so cheap ops such as ``mvlgamma`` or ``_convert_indices``
#: do not match; ``linalg_vector_norm`` has no solver piece either.
_COSTLY_PIECE = re.compile(
    r"(add|b|addb|badd)?mm|(add)?mv|v?dot|matmul|linear|trilinear|einsum|tensordot|cdist"
    r"|conv(\d+d)?|convolution|attention|transformer|rnn|lstm|gru|fft|cholesky|svd|solve|lstsq|eigh?|qr|inv"
)
_ATTENTION_OP = re.compile(r"attention")


def _is_costly(op: Any) -> bool:
    """True for an op whose cost matters: a multiply-add kernel by name, or any non-aten op (a custom or
    extension kernel: we cannot know what it costs, so it must not pass unseen)."""
    namespace, _, name = str(op).partition(".")
    if namespace not in ("aten", "prims", "prim"):
        return True
    return any(_COSTLY_PIECE.fullmatch(piece) for piece in name.split("_") if piece)


class _OpRecorder(TorchDispatchMode):
    """Records the leaf ops that actually ran (entered outside FlopCounterMode, it sees its leaves)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[Any] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls[func._overloadpacket] += 1
        return func(*args, **(kwargs or {}))


@dataclass
class FlopCount:
    """One counted forward pass: total, per direct child of the root, per op, and per child and op."""

    total: int
    by_module: dict[str, int]
    by_op: dict[str, int]
    attention: int
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    by_module_op: dict[str, dict[str, int]] = field(default_factory=dict)
    method: str = FLOP_METHOD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    """The eval-mode MHA/encoder fast path fuses all matmuls into one uncounted kernel; turn it off."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _flops_by_child(model: nn.Module, counts: dict[str, dict[Any, int]]) -> dict[str, dict[str, int]]:
    """{child: {op: FLOPs}} from FlopCounterMode's per-module table (keys ``Root.child.grandchild``).

    A container child (nn.ModuleList) is never called itself, so its FLOPs are the sum over its outermost
    called descendants; nested keys are skipped so nothing is counted twice.
    """
    root = type(model).__name__
    out: dict[str, dict[str, int]] = {}
    for name, _ in model.named_children():
        prefix = f"{root}.{name}"
        keys = [k for k in counts if k == prefix or k.startswith(prefix + ".")]
        outer = [k for k in keys if not any(k != o and k.startswith(o + ".") for o in keys)]
        ops: Counter[str] = Counter()
        for k in outer:
            ops.update({str(op): int(n) for op, n in counts[k].items()})
        out[name] = dict(ops.most_common())
    return out


def count_flops(model: nn.Module, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                ) -> FlopCount:
    """FLOPs of one `model(*args, **kwargs)` in eval mode without gradients (training mode is restored).

    ``by_module`` splits the total over the root's direct children, plus ``(root)`` for ops the root's own
    forward runs (concatenation glue, a final matmul) when there are any.
    """
    was_training = model.training
    model.eval()
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    try:
        with torch.no_grad(), _mha_fastpath_disabled(), recorder, counter:
            model(*args, **(kwargs or {}))
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    by_op = {str(op): int(n) for op, n in sorted(counts.get("Global", {}).items(), key=lambda kv: -kv[1])}
    by_module_op = _flops_by_child(model, counts)
    root_ops = Counter(by_op)
    for ops in by_module_op.values():
        root_ops.subtract(ops)
    if any(root_ops.values()):  # ops run by the root's own forward (outside every child)
        by_module_op["(root)"] = {op: n for op, n in root_ops.most_common() if n}
    by_module = {name: sum(ops.values()) for name, ops in by_module_op.items()}
    attention = sum(n for op, n in by_op.items() if _ATTENTION_OP.search(op))
    registry = set(flop_registry) | set(EXTRA_FLOP_FORMULAS)
    uncounted = {str(op): n for op, n in recorder.calls.items() if op not in registry and _is_costly(op)}
    return FlopCount(int(total), by_module, by_op, int(attention), uncounted, by_module_op)


@dataclass
class ParamCount:
    """All parameters (frozen included: the protocol's P), the trainable ones, and per direct child."""

    total: int
    trainable: int
    by_module: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: nn.Module) -> ParamCount:
    """Parameter counts; a tensor shared between modules is counted once in the total."""
    params = list(model.parameters())
    by_module = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        by_module["(root)"] = own
    return ParamCount(sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad),
                      by_module)

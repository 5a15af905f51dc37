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

`profile_model` applies these rules to an EffiMiniVLM (canonical FLOPs, and optionally FLOPs at a dataset's
mean real token length, which are informational: padding is what the canonical number fixes) and adds C
and E; `run_profile` is the `effiminivlm profile` command (saved model or recipe with random init, PLCC
from the command line or an evaluation report, JSON and plot).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, addmm_flop, bmm_flop, flop_registry

from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.evaluation.protocol import (
    DEFAULT_PROTOCOL,
    ProtocolCfg,
    protocol_score,
    read_report_plcc,
)
from effiminivlm.files import write_json

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


# ------------------------------------------------------------------------------------------------- profile


@dataclass
class ModelProfile:
    """Everything the protocol needs about one model: P, F, C, E (and CES once a PLCC is attached).

    ``flops_g`` is the canonical count that C uses; ``flops_g_mean_length`` is the same pass with the text at
    the dataset's mean real token count (``mean_length`` tokens, the rounded ``mean_tokens``): what a
    typical product costs when padding is not counted. It is informational and never enters C.
    """

    label: str
    params: int
    params_m: float
    trainable_m: float
    flops: int
    flops_g: float
    flops_g_mean_length: float | None
    modalities: str
    image_size: int | None
    max_length: int | None
    mean_tokens: float | None
    mean_length: int | None
    params_by_module_m: dict[str, float]
    flops_by_module_g: dict[str, float]
    flops_by_module_g_mean_length: dict[str, float] | None
    flops_by_op_g: dict[str, float]
    flops_by_module_op: dict[str, dict[str, int]]  # exact canonical FLOPs per part and op
    attention_g: float
    c: float
    e: float
    method: str
    uncounted_ops: dict[str, int]
    protocol: dict[str, float]
    mean_tokens_source: str | None = None
    plcc: float | None = None
    plcc_source: str | None = None
    ces: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _canonical_inputs(model: nn.Module, image_size: int | None, length: int | None) -> tuple[Any, ...]:
    """(pixel_values, input_ids, attention_mask, has_image) for batch 1: every token attended, an image."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    pixels = has_image = ids = mask = None
    if image_size is not None:
        pixels = torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype)
        has_image = torch.ones(1, dtype=torch.bool, device=device)
    if length is not None:  # the ids' values do not change the cost; 1 is in every vocabulary
        ids = torch.ones(1, length, dtype=torch.long, device=device)
        mask = torch.ones(1, length, dtype=torch.long, device=device)
    return pixels, ids, mask, has_image


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EffiMiniVLMError(f"{what} must be a positive integer, got {value!r}")
    return value


def _count_canonical(model: nn.Module, image_size: int | None, length: int | None, what: str) -> FlopCount:
    try:
        return count_flops(model, _canonical_inputs(model, image_size, length))
    except (RuntimeError, IndexError, ValueError) as e:  # e.g. more tokens than position embeddings
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EffiMiniVLMError(f"cannot run the model on {what}: {reason}") from None


def profile_model(model: nn.Module, image_size: int | None = None, max_length: int | None = None,
                  mean_tokens: float | None = None, cfg: ProtocolCfg = DEFAULT_PROTOCOL,
                  label: str | None = None) -> ModelProfile:
    """Params, canonical FLOPs (and at `mean_tokens` when given), C and E of an EffiMiniVLM-like model.

    `image_size` / `max_length` default to the model's own (``model.cfg``): the canonical input is batch 1,
    one image of that size and the text padded/truncated to ``max_length`` with every token attended, so
    the number depends on the architecture only, not on the data. A tower the model lacks (image-only or
    text-only ablations) gets no input. Needs no weights: a random-init model gives the same counts.
    """
    mcfg = getattr(model, "cfg", None)
    has_image = getattr(model, "image_encoder", None) is not None
    has_text = getattr(model, "text_encoder", None) is not None
    if image_size is None and has_image:
        image_size = mcfg.image_encoder.image_size
    if max_length is None and has_text:
        max_length = mcfg.text_encoder.max_length
    size = _positive_int(image_size, "image size") if has_image else None
    length = _positive_int(max_length, "max length") if has_text else None
    canonical = _count_canonical(model, size, length, f"the canonical input (image {size}, {length} tokens)")

    mean_length = per_module_mean = flops_mean = None
    if mean_tokens is not None:
        mean_tokens = float(mean_tokens)
        if not (math.isfinite(mean_tokens) and mean_tokens > 0):
            raise EffiMiniVLMError(f"mean token length must be a positive number, got {mean_tokens!r}")
        if length is not None and mean_tokens > length + 1e-9:
            raise EffiMiniVLMError(f"mean token length {mean_tokens:.1f} exceeds max length {length}; "
                                   "texts are truncated to max length before counting")
        mean_length = max(1, round(mean_tokens)) if has_text else None
        at_mean = (_count_canonical(model, size, mean_length, f"{mean_length} tokens") if has_text
                   else canonical)  # no text tower: the cost does not depend on the text
        flops_mean = at_mean.total / 1e9
        per_module_mean = {k: v / 1e9 for k, v in at_mean.by_module.items()}

    params = count_params(model)
    params_m, flops_g = params.total / 1e6, canonical.total / 1e9
    score = protocol_score(params_m, flops_g, cfg=cfg)
    return ModelProfile(
        label=label or type(model).__name__, params=params.total, params_m=params_m,
        trainable_m=params.trainable / 1e6, flops=canonical.total, flops_g=flops_g,
        flops_g_mean_length=flops_mean, modalities=getattr(mcfg, "modalities", "image_text"),
        image_size=size, max_length=length, mean_tokens=mean_tokens, mean_length=mean_length,
        params_by_module_m={k: v / 1e6 for k, v in params.by_module.items()},
        flops_by_module_g={k: v / 1e9 for k, v in canonical.by_module.items()},
        flops_by_module_g_mean_length=per_module_mean,
        flops_by_op_g={k: v / 1e9 for k, v in canonical.by_op.items()},
        flops_by_module_op=canonical.by_module_op, attention_g=canonical.attention / 1e9,
        c=score.c, e=score.e, method=canonical.method, uncounted_ops=canonical.uncounted_ops,
        protocol=cfg.to_dict())


def with_plcc(profile: ModelProfile, plcc: float, source: str, cfg: ProtocolCfg = DEFAULT_PROTOCOL
              ) -> ModelProfile:
    """The profile with a PLCC and its CES (NaN when the PLCC is undefined, e.g. constant predictions)."""
    score = protocol_score(profile.params_m, profile.flops_g, plcc, cfg)
    return dataclasses.replace(profile, plcc=score.plcc, plcc_source=source, ces=score.ces)


# ------------------------------------------------------------------------------------------- the command


def load_profile_model(model_dir: str | Path | None = None, recipe: str | None = None,
                       overrides: list[str] | tuple[str, ...] = ()
                       ) -> tuple[nn.Module, str, Callable[[], Any]]:
    """(model, label, tokenizer loader) from a saved folder, or a recipe's architecture with random init.

    Counting needs no weights, so a recipe is built with ``pretrained=False`` (presets whose weights are
    unreachable still profile); the tokenizer is loaded only when asked (for the mean token length).
    """
    if (model_dir is None) == (recipe is None):
        raise EffiMiniVLMError("give exactly one of --model (a saved model folder) or --recipe (random init)")
    if model_dir is not None:
        if overrides:
            raise EffiMiniVLMError("--set overrides a recipe; it cannot change a saved model (use --recipe)")
        from effiminivlm.models.factory import load_model
        from effiminivlm.models.regressor import EffiMiniVLM

        return (EffiMiniVLM.from_pretrained(model_dir), str(model_dir),
                lambda: load_model(model_dir)[1])
    from effiminivlm.config import load_recipe
    from effiminivlm.models.factory import create_model, create_tokenizer

    rec = load_recipe(recipe, list(overrides))
    return (create_model(rec.model, pretrained=False), f"recipe {rec.name} (random init)",
            lambda: create_tokenizer(rec.model.text_encoder))


def data_mean_tokens(data: str | Path, tokenizer: Any, max_length: int) -> tuple[float, str]:
    """The mean real token count (after truncation to `max_length`) of a prepared folder (all splits), a
    LoViF input.csv or meta files, and a label saying what it was measured on."""
    from effiminivlm.data.dataset import ProductDataset, mean_token_length
    from effiminivlm.serving.predict import read_inputs

    table = read_inputs([str(data)]).table
    if table.num_rows == 0:
        raise DataError(f"{data}: no rows to measure the mean token length on")
    dataset = ProductDataset(table, None, images="none")
    mean, sampled = mean_token_length(dataset, tokenizer, max_length)
    return mean, f"{data} ({sampled:,} of {len(dataset):,} rows, truncated to {max_length} tokens)"


def run_profile(model_dir: str | Path | None = None, recipe: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), *, image_size: int | None = None,
                max_length: int | None = None, plcc: float | None = None, report: str | Path | None = None,
                data: str | Path | None = None, mean_tokens: float | None = None,
                cfg: ProtocolCfg = DEFAULT_PROTOCOL, json_out: str | Path | None = None,
                plot_out: str | Path | None = None) -> ModelProfile:
    """`effiminivlm profile`: load, count (also at a mean token length: measured on `data`, or given as
    `mean_tokens`), attach a PLCC (given, or an evaluation report's) and write the JSON / plot when asked."""
    if plcc is not None and report is not None:
        raise EffiMiniVLMError("give the PLCC once: --plcc or --report, not both")
    if data is not None and mean_tokens is not None:
        raise EffiMiniVLMError("give the mean length once: --data (measured) or --mean-tokens, not both")
    source = None
    if report is not None:
        plcc, source = read_report_plcc(report), str(report)
    elif plcc is not None:
        source = "--plcc"
    model, label, load_tokenizer = load_profile_model(model_dir, recipe, overrides)
    mean_source = None if mean_tokens is None else "--mean-tokens"
    if data is not None:
        if model.text_encoder is None:
            raise EffiMiniVLMError("--data gives the mean token length, but this model has no text tower")
        length = _positive_int(max_length if max_length is not None else model.cfg.text_encoder.max_length,
                               "max length")
        mean_tokens, mean_source = data_mean_tokens(data, load_tokenizer(), length)
    profile = profile_model(model, image_size, max_length, mean_tokens, cfg, label=label)
    profile = dataclasses.replace(profile, mean_tokens_source=mean_source)
    if plcc is not None:
        profile = with_plcc(profile, plcc, source or "", cfg)
    if json_out is not None:
        write_json(profile.to_dict(), json_out)
    if plot_out is not None:
        from effiminivlm.evaluation.plots import PlotPoint, plot_protocol

        plot_protocol(plot_out, [PlotPoint(label, profile.c, profile.plcc)], cfg=cfg)
    return profile

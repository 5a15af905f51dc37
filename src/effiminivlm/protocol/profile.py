"""`effiminivlm profile`: params, canonical FLOPs, C and E (and CES) of one model, by the protocol's rules.

`profile_model` applies the counting rules of `protocol.flops` to an EffiMiniVLM (canonical FLOPs, and
optionally FLOPs at a dataset's mean real token length, which are informational: padding is what the
canonical number fixes) and adds C and E; `run_profile` is the command (saved model or recipe with random
init through `models.factory.load_model_or_recipe`, PLCC from the command line or an evaluation report,
JSON and plot).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from effiminivlm.data.dataset import ProductDataset, mean_token_length
from effiminivlm.data.inputs import read_inputs
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.files import write_json
from effiminivlm.models.factory import load_model_or_recipe
from effiminivlm.protocol.flops import FlopCount, count_flops, count_params
from effiminivlm.protocol.formulas import DEFAULT_PROTOCOL, ProtocolCfg, protocol_score
from effiminivlm.protocol.score import read_report_plcc


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
    protocol: dict[str, Any]  # ProtocolCfg.to_dict(): numbers and the penalty form
    mean_tokens_source: str | None = None
    plcc: float | None = None
    plcc_source: str | None = None
    ces: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EffiMiniVLMError(f"{what} must be a positive integer, got {value!r}")
    return value


def _count_canonical(model: nn.Module, image_size: int | None, length: int | None, what: str) -> FlopCount:
    try:
        return count_flops(model, (model.example_batch(image_size, length),))  # type: ignore[operator]
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
        image_size = mcfg.input.image_size
    if max_length is None and has_text:
        max_length = mcfg.input.max_length
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
    """The profile with a PLCC and its CES (0 when the PLCC is undefined, e.g. constant predictions, as the
    reference scorer counts it; the PLCC stays NaN)."""
    score = protocol_score(profile.params_m, profile.flops_g, plcc, cfg)
    return dataclasses.replace(profile, plcc=score.plcc, plcc_source=source, ces=score.ces)


# ------------------------------------------------------------------------------------------- the command


def data_mean_tokens(data: str | Path, tokenizer: Any, max_length: int) -> tuple[float, str]:
    """The mean real token count (after truncation to `max_length`) of a prepared folder (all splits), a
    LoViF input.csv or meta files, and a label saying what it was measured on."""
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
    model, tokenizer, label = load_model_or_recipe(model_dir, recipe, overrides, tokenizer=data is not None)
    mean_source = None if mean_tokens is None else "--mean-tokens"
    if data is not None:
        if model.text_encoder is None:
            raise EffiMiniVLMError("--data gives the mean token length, but this model has no text tower")
        length = _positive_int(max_length if max_length is not None else model.cfg.input.max_length,
                               "max length")
        mean_tokens, mean_source = data_mean_tokens(data, tokenizer, length)
    profile = profile_model(model, image_size, max_length, mean_tokens, cfg, label=label)
    profile = dataclasses.replace(profile, mean_tokens_source=mean_source)
    if plcc is not None:
        profile = with_plcc(profile, plcc, source or "", cfg)
    if json_out is not None:
        write_json(profile.to_dict(), json_out)
    if plot_out is not None:
        from effiminivlm.protocol.plots import PlotPoint, plot_protocol

        plot_protocol(plot_out, [PlotPoint(label, profile.c, profile.plcc)], cfg=cfg)
    return profile

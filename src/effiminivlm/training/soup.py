"""Model soups (`effiminivlm soup RUN... --out DIR`): weight averages of fine-tuned checkpoints.

Why: models fine-tuned from the same initialisation (seeds, folds, learning rates) usually lie in one basin,
so the average of their weights predicts better than each of them (Wortsman et al., 2022; PinCO's soup) at
the cost of one model: the result is an ordinary saved model with the same params and FLOPs.

    uniform  the mean of every checkpoint's weights
    greedy   (--greedy --data P) checkpoints sorted by their own validation PLCC, best first; each is added
             only if the soup's validation PLCC improves (Wortsman's greedy soup)

A RUN is a run folder (its model/) or a saved model folder. Checkpoints must share the architecture and the
whole model config (same tensors); anything else is refused naming the first difference. Integer buffers
(BatchNorm's batch counters) come from the first checkpoint. Models saved with unmerged LoRA adapters are
refused: averaging A and B separately is not the average of the updates (save them merged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.files import partial_dir, replace_dir, write_json
from effiminivlm.inference import make_loader, run_inference
from effiminivlm.models.factory import load_model
from effiminivlm.runtime import resolve_device, resolve_precision


def model_folder(run: str | Path) -> Path:
    """RUN/model for a run folder, RUN for a saved model folder."""
    run = Path(run)
    if (run / "model" / "config.json").is_file():
        return run / "model"
    if (run / "config.json").is_file():
        return run
    raise EffiMiniVLMError(f"{run} is neither a run folder (with model/) nor a saved model folder")


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "model.") -> str | None:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _config_diff(va, vb, f"{prefix}{k}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{k}: {va!r} != {vb!r}"
    return None


def check_compatible(models: list[torch.nn.Module], names: list[str]) -> None:
    """Same config and the same tensors (names, shapes, dtypes), else one line naming the difference."""
    ref_cfg = dataclasses.asdict(models[0].cfg)
    ref = {k: (tuple(v.shape), v.dtype) for k, v in models[0].state_dict().items()}
    if any("lora_" in k for k in ref):
        raise EffiMiniVLMError(f"{names[0]} keeps unmerged LoRA adapters; soups average merged models "
                               "(train with model.*.lora.merge: true)")
    for model, name in zip(models[1:], names[1:], strict=True):
        diff = _config_diff(ref_cfg, dataclasses.asdict(model.cfg))
        if diff:
            raise EffiMiniVLMError(f"cannot soup {name} with {names[0]}: different model config ({diff})")
        own = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
        if own != ref:
            key = next(k for k in sorted(set(own) | set(ref)) if own.get(k) != ref.get(k))
            raise EffiMiniVLMError(f"cannot soup {name} with {names[0]}: tensor {key} differs "
                                   f"({own.get(key)} vs {ref.get(key)})")


def average_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform mean of floating tensors (in float64, cast back); other tensors from the first state."""
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def soup(runs: list[str], out: str | Path, *, greedy: bool = False, data: str | None = None,
         split: str = "val", images_dir: str | None = None, batch_size: int = 64, device: str | None = None,
         precision: str = "auto", overwrite: bool = False, progress: bool = True,
         features: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Average the checkpoints of `runs` (uniformly, or greedily on `data`'s `split` PLCC) into `out`.

    An existing `out` is replaced only with `overwrite` and only when it is a saved model folder that is not
    one of the soup's own members. `features` (a cache of `data`'s items, `effiminivlm embed`) scores the
    soups of probe models (frozen towers) by their head on the cached features, with no tower pass; it is
    refused unless every member's towers are the ones that made the cache."""
    if len(runs) < 2:
        raise EffiMiniVLMError("a soup needs at least two checkpoints")
    _check_out(Path(out), [model_folder(r) for r in runs], overwrite)
    if greedy and data is None:
        raise EffiMiniVLMError("--greedy needs --data (a prepared folder whose validation split decides)")
    if features is not None and data is None:
        raise EffiMiniVLMError("--features needs --data (the prepared folder the cache was made from)")
    folders = [model_folder(r) for r in runs]
    loaded = [load_model(f) for f in folders]
    models, tokenizer = [m for m, _ in loaded], loaded[0][1]
    names = [str(f) for f in folders]
    check_compatible(models, names)
    states = [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in models]
    target = models[0]
    summary: dict[str, Any] = {"kind": "greedy" if greedy else "uniform", "members": names}
    if data is not None:
        evaluate = (_plcc_on_features(target, models, data, split, features) if features is not None else
                    _plcc_on(target, tokenizer, data, split, images_dir, batch_size, device, precision,
                             progress))
        own = [evaluate(s) for s in states]
        summary["member_plcc"] = dict(zip(names, own, strict=True))
        if greedy:
            order = sorted(range(len(states)), key=lambda i: -np.nan_to_num(own[i], nan=-2.0))
            chosen, best = [order[0]], own[order[0]]
            for i in order[1:]:
                plcc = evaluate(average_state([states[j] for j in [*chosen, i]]))
                added = plcc > best
                log(f"{names[i]}: soup PLCC {plcc:.4f} vs {best:.4f} -> {'added' if added else 'left out'}")
                if added:
                    chosen, best = [*chosen, i], plcc
            summary["members"] = [names[i] for i in chosen]
            summary[f"{split}_plcc"] = best
        else:
            summary[f"{split}_plcc"] = evaluate(average_state(states))
    members = [states[names.index(n)] for n in summary["members"]]
    target.load_state_dict(average_state(members))
    out = Path(out)
    tmp = partial_dir(out)
    try:
        target.save_pretrained(tmp, tokenizer=tokenizer)
        write_json(summary, tmp / "soup.json")
        replace_dir(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{summary['kind']} soup of {len(members)} of {len(states)} checkpoints -> {out}"
        + (f" ({split} PLCC {summary[f'{split}_plcc']:.4f})" if data is not None else ""))
    summary["model_dir"] = str(out)
    return summary


def _check_out(out: Path, members: list[Path], overwrite: bool) -> None:
    if out.resolve() in {m.resolve() for m in members}:
        raise EffiMiniVLMError(f"--out {out} is one of the checkpoints being averaged; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / "config.json").is_file():
            raise EffiMiniVLMError(f"--out {out} exists and is not a saved model folder; refusing to "
                                   "replace it")
        if not overwrite:
            raise EffiMiniVLMError(f"--out {out} holds a model; pass --overwrite to replace it")


def _plcc_on(model: torch.nn.Module, tokenizer: Any, data: str, split: str, images_dir: str | None,
             batch_size: int, device: str | None, precision: str, progress: bool
             ) -> Callable[[dict[str, torch.Tensor]], float]:
    """A function: state dict -> PLCC of `model` with those weights on `split` of `data`."""
    table = read_prepared(data, split)
    if table.num_rows < 2:
        raise DataError(f"{data}: split {split!r} has {table.num_rows} rows; a soup needs at least 2 to "
                        "measure PLCC")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    store = ImageStore.for_prepared(data, images_dir)
    loader = make_loader(model, tokenizer, table, store, batch_size=batch_size)
    model.to(dev)

    def plcc(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        res = run_inference(model, loader, dev, prec, progress=progress, desc="soup")
        return float(compute_metrics(res.pred, res.target)["overall"]["plcc"])

    return plcc


def _plcc_on_features(model: torch.nn.Module, members: list[torch.nn.Module], data: str, split: str,
                      features: str | Path) -> Callable[[dict[str, torch.Tensor]], float]:
    """A function: state dict -> PLCC of the head on the cached features of `split`. Valid because every
    member's towers match the cache (checked): their average is those same towers."""
    from effiminivlm.training.embed import feature_matrix, load_features, model_signature

    signature = model_signature(members[0])
    for m in members[1:]:
        if model_signature(m) != signature:
            raise EffiMiniVLMError("--features: the checkpoints' towers differ (fine-tuned models); "
                                   "drop --features to score the soup through its towers")
    feats = load_features(features, signature)
    table = read_prepared(data, split)
    if table.num_rows < 2:
        raise DataError(f"{data}: split {split!r} has {table.num_rows} rows; a soup needs at least 2 to "
                        "measure PLCC")
    x = torch.as_tensor(feature_matrix(feats, table.column("parent_asin").to_pylist()), dtype=torch.float32)
    y = table.column("average_rating").to_numpy().astype(np.float64)

    def plcc(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            pred = model.head(x.to(next(model.head.parameters()).dtype)).squeeze(-1).double().numpy()
        return float(compute_metrics(pred, y)["overall"]["plcc"])

    return plcc

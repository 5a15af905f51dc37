"""The run folder's lifecycle: what a new `train`, a rerun or a `--resume` may do with what is already there.

Why: a run can be killed at any moment (pre-empted machine, SIGKILL, power loss), and the folder it leaves
must be usable by the next command, with messages that say what is really there. The states and what each
command does with them:

    empty / missing                    start a new run (--resume: error, nothing to resume)
    recipe.yaml, no checkpoint/model   killed before its first epoch finished: a rerun restarts it with the
                                       given recipe, --resume restarts it with the stored recipe.yaml
    recipe.yaml + model/, no checkpoint  killed after publishing its first model, before the checkpoint:
                                       --resume restarts it with the stored recipe (the model is replaced when
                                       the new run publishes its first); a rerun must say --resume/--overwrite
    train_summary.json, no checkpoint  a finished run whose checkpoint was removed: only --overwrite restarts
    checkpoint/last.pt                 --resume continues it; a rerun must say --resume/--overwrite
    other files, no recipe.yaml        not a run folder: refused, whatever the flags

Before any of that, an interrupted publish of `model/` is repaired (`files.recover_dir`) and the temporary
files a killed run leaves behind (half-written checkpoint, model folder, JSON) are removed. A trained model is
never deleted without `--overwrite`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from effiminivlm.config import Recipe, load_recipe
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.files import atomic_write_text, recover_dir, to_jsonable
from effiminivlm.training.checkpoint import CHECKPOINT_NAME

RECIPE, METRICS, SUMMARY, MODEL, CHECKPOINT_DIR = (
    "recipe.yaml", "metrics.jsonl", "train_summary.json", "model", "checkpoint")
MODEL_TMP = ".model.tmp"  # where loop.train writes a model before `replace_dir` publishes it


@dataclass
class RunStart:
    """How `train` starts in a run folder: from its checkpoint, or from scratch (with `recipe` when the run's
    own stored recipe must be used, i.e. a `--resume` of a run that never reached its first checkpoint)."""

    from_checkpoint: bool
    recipe: Recipe | None = None


def checkpoint_path(out: Path) -> Path:
    return out / CHECKPOINT_DIR / CHECKPOINT_NAME


def clean_orphans(out: Path) -> list[str]:
    """Delete the temporary files an interrupted run left in `out`; returns what was removed.

    Only the names this package writes (`.<name>.tmp` beside recipe.yaml, metrics.jsonl, train_summary.json,
    the checkpoint, and the `.model.tmp` folder), so a user's own files are never touched.
    """
    ckpt = checkpoint_path(out)
    candidates = [out / MODEL_TMP, ckpt.with_name(f".{ckpt.name}.tmp"),
                  *(out / f".{name}.tmp" for name in (RECIPE, METRICS, SUMMARY))]
    removed = [path.name for path in candidates if _remove(path)]
    if ckpt.parent.is_dir() and not any(ckpt.parent.iterdir()):
        ckpt.parent.rmdir()  # a kill during the first checkpoint write leaves it empty
    return removed


def open_run_dir(out: Path, *, resume: bool, overwrite: bool, log: Callable[[str], None]) -> RunStart:
    """Repair and clean `out`, decide how the run starts, and refuse (one true line) what must not happen."""
    if resume and overwrite:
        raise EffiMiniVLMError("--resume continues a run and --overwrite replaces it: pass only one")
    if out.exists() and not out.is_dir():
        raise EffiMiniVLMError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        repaired = recover_dir(out / MODEL)
        if repaired:
            log(repaired)
        removed = clean_orphans(out)
        if removed:
            log(f"removed temporary files of an interrupted run from {out}: {', '.join(removed)}")
    ckpt = checkpoint_path(out)
    has = {name: (out / name).exists() for name in (RECIPE, MODEL, SUMMARY)}
    has_ckpt = ckpt.is_file()
    is_run = has_ckpt or any(has.values())
    if out.is_dir() and any(out.iterdir()) and not is_run:
        raise EffiMiniVLMError(f"--out {out} is not empty and holds no run (no {RECIPE}, {MODEL}/ or "
                               f"{ckpt}); choose a new or empty --out")

    if overwrite:
        if is_run:
            _remove_run(out, log)
        return RunStart(from_checkpoint=False)
    if resume:
        if has_ckpt:
            return RunStart(from_checkpoint=True)
        if not has[RECIPE] and not (has[MODEL] or has[SUMMARY]):
            raise EffiMiniVLMError(f"--resume: {out} holds no run to resume (no {ckpt}, no {RECIPE}); "
                                   "start it without --resume")
        if not has[RECIPE]:
            raise EffiMiniVLMError(f"--resume: {out} has a trained model but no {ckpt} or {RECIPE} to resume "
                                   "from; pass --overwrite to train again there (deletes its model/), or "
                                   "choose a new --out")
        if has[SUMMARY]:
            raise EffiMiniVLMError(f"--resume: {out} is a finished run without its checkpoint ({ckpt} "
                                   "is missing); pass --overwrite to train it again (deletes its model/), or "
                                   "choose a new --out")
        recipe = read_stored_recipe(out / RECIPE)
        note = (f"; its {MODEL}/ from the interrupted run is replaced when this one saves its first best "
                "model" if has[MODEL] else "")
        log(f"--resume: {out} has no checkpoint (the run stopped before its first epoch finished); starting "
            f"it again from scratch with its own {RECIPE}{note}")
        _forget_metrics(out)
        return RunStart(from_checkpoint=False, recipe=recipe)
    if has_ckpt:
        raise EffiMiniVLMError(f"--out {out} is not empty: it holds a run with a checkpoint ({ckpt}); "
                               "pass --resume to continue it, --overwrite to train it again from scratch "
                               "(deletes its model/), or choose a new --out")
    if has[SUMMARY] or has[MODEL]:
        interrupted = has[RECIPE] and not has[SUMMARY]  # --resume can restart it from its own recipe
        what = ("a finished run" if has[SUMMARY] else f"a {MODEL}/ from an interrupted run" if interrupted
                else f"a {MODEL}/")
        also = f" --resume to train it again with its own {RECIPE}," if interrupted else ""
        raise EffiMiniVLMError(f"--out {out} is not empty: it holds {what} and no checkpoint; pass{also} "
                               "--overwrite to train again from scratch (deletes its model/), or choose a "
                               "new --out")
    if has[RECIPE]:
        log(f"restarting {out}: the earlier run stopped before its first epoch finished ({RECIPE}, no "
            "checkpoint or model); starting from scratch with this recipe")
        _forget_metrics(out)
    return RunStart(from_checkpoint=False)


def read_stored_recipe(path: Path) -> Recipe:
    """The recipe a run stored; a damaged file is a one-line error that says how to go on."""
    try:
        return load_recipe(str(path))
    except (EffiMiniVLMError, ValueError, KeyError, TypeError, OSError, yaml.YAMLError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EffiMiniVLMError(f"{path}: unreadable stored recipe ({msg}); train again with --overwrite "
                               "and a --recipe, or choose a new --out") from None


def _forget_metrics(out: Path) -> None:
    """A run restarting from scratch must not append to the lines of the attempt that was killed."""
    (out / METRICS).unlink(missing_ok=True)


def _remove_run(out: Path, log: Callable[[str], None]) -> None:
    """--overwrite: delete the earlier run's own files (other files in the folder are left alone)."""
    removed = [name for name in (CHECKPOINT_DIR, MODEL, METRICS, SUMMARY, RECIPE) if _remove(out / name)]
    log(f"--overwrite: removed the earlier run's {', '.join(removed)} from {out}")


def sync_metrics(out: Path, records: list[dict[str, Any]] | None, epoch: int
                 ) -> tuple[list[dict[str, Any]], str | None]:
    """Make metrics.jsonl hold exactly the epochs a checkpoint covers (atomically) -> (its records, what
    changed, or None).

    Why: the metrics line and the checkpoint are two writes, and a kill between them (in either order) would
    otherwise leave an epoch that the resumed run writes a second time, or a half-written last line.
    `records` are the lines stored in the checkpoint; older checkpoints have none, and then the file's own
    lines up to `epoch` are kept, once per epoch (a line that does not parse is dropped; the message gives
    the line counts before and after).
    """
    path = out / METRICS
    old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if records is None:
        records = []
        for line in old:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and rec["epoch"] <= epoch
                    and all(r["epoch"] != rec["epoch"] for r in records)):
                records.append(rec)
    lines = [json.dumps(to_jsonable(r), allow_nan=False) for r in records]
    if lines == old:
        return records, None
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return records, (f"{path}: rewritten to the {len(lines)} epoch(s) the checkpoint covers (it had "
                     f"{len(old)} line(s) from the interrupted run)")


def _remove(path: Path) -> bool:
    """Delete a file or a folder tree; False when there was nothing there."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    else:
        return False
    return True

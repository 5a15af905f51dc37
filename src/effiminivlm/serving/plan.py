"""What the fast path built for a model folder, written down so the next process can run it without torch.

Why: `predict` of 32 items spent most of its time importing torch, timm and transformers to build the
PyTorch model its cached OpenVINO graphs are keyed on. Once a scorer has built the fast path for a folder,
everything the numbers depend on is here: the OpenVINO graph of each tower (the cached fp32 conversion or
the folder's stored int8 variant) and of the head, with the precision, threads and streams each was
compiled with, the pixel normalisation, the tokenizer exactly as it ran and the protocol's params / FLOPs
(also in the folder's cost.json, where the folder is writable). `serving.lean` compiles
the same graphs the same way from it (OpenVINO's compiled-blob cache makes that a read).

The plan lives in the graph cache (`ovgraph.cache_dir()/plans/KEY`), keyed by what can be known without
torch: every file of the model folder (name, size, modification time; cost.json aside, it is written after),
the versions of effiminivlm, OpenVINO and tokenizers, the scoring precision, the cores the process may use
and the CPU's ISA facts. Anything else (another folder, edited weights, another CPU) has another key, so a
plan is never applied to what it was not recorded for; a plan is only written when the fast path ran with
nothing falling back. Writing is best effort: an unwritable cache only means the next run imports torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from effiminivlm.ovgraph import cache_dir, isa_facts

PLAN_NAME = "plan.json"
PLAN_VERSION = 1
#: Written into a model folder after the plan is recorded: not part of what the numbers depend on.
UNKEYED = ("cost.json",)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def plan_key(model_dir: str | Path, precision: str, threads: int) -> str | None:
    """The digest a folder's plan is stored under (None when the folder cannot be read)."""
    folder = Path(model_dir)
    files = []
    try:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel not in UNKEYED:
                st = path.stat()
                files.append([rel, st.st_size, st.st_mtime_ns])
    except OSError:
        return None
    if not any(f[0] == "config.json" for f in files):
        return None
    facts = {"version": PLAN_VERSION, "folder": str(folder.resolve()), "files": files,
             "packages": [_version(p) for p in ("effiminivlm", "openvino", "tokenizers")],
             "precision": precision, "threads": threads, "isa": isa_facts()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def plan_dir(key: str) -> Path:
    return cache_dir() / "plans" / key


def read_plan(key: str) -> dict[str, Any] | None:
    """The plan stored under `key`, or None when absent, damaged or pointing at graphs no longer there."""
    folder = plan_dir(key)
    try:
        plan = json.loads((folder / PLAN_NAME).read_text(encoding="utf-8"))
        if plan.get("version") != PLAN_VERSION:
            return None
        for tower in plan["towers"].values():
            xml = Path(tower["graph"])
            if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
                return None
        if "cost" not in plan:  # recorded before plans carried the params / FLOPs: record again
            return None
        if "head" not in plan["towers"] or ("text" in plan["towers"] and
                                            not (folder / "tokenizer.json").is_file()):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    plan["dir"] = str(folder)
    return plan


def record_plan(scorer: Any) -> Path | None:
    """Write the plan of `scorer`'s fast path (a `serving.scorer.Scorer` of an EffiMiniVLM folder on a CPU,
    its towers and head in OpenVINO, nothing fallen back); None when it is not such a case or cannot be
    written."""
    from effiminivlm.models.openvino_backend import OpenVINOTower
    from effiminivlm.models.regressor import EffiMiniVLM

    model, runner, tok = scorer.model, scorer.runner, scorer.tokenizer
    if (scorer.model_dir is None or not scorer.fast or scorer.device.type != "cpu" or scorer.num_workers
            or type(model) is not EffiMiniVLM or getattr(runner, "fast_fallbacks", None) != []):
        return None
    key = plan_key(scorer.model_dir, scorer.precision, scorer.threads)
    if key is None or read_plan(key) is not None:
        return None
    towers: dict[str, Any] = {}
    plan: dict[str, Any] = {"version": PLAN_VERSION, "image_size": model.cfg.input.image_size,
                            "max_length": scorer.max_length, "image_dim": model.image_dim}
    parts = {"image": runner.image_encoder, "text": runner.text_encoder, "head": runner.head}
    for kind, module in parts.items():
        if module is None:
            continue
        if kind == "image":  # uint8 pixels are normalised first (`models.optimize._PixelNormalize`)
            if not (hasattr(module, "scale") and hasattr(module, "shift")):
                return None
            plan["scale"] = module.scale.reshape(-1).numpy().tolist()
            plan["shift"] = module.shift.reshape(-1).numpy().tolist()
            module = module.inner
        if not isinstance(module, OpenVINOTower) or module.graph_path is None:
            return None
        towers[kind] = {"graph": str(Path(module.graph_path).resolve()), "precision": module.precision,
                        "threads": module.threads, "streams": module.streams}
    plan["towers"] = towers
    backend = getattr(tok, "backend_tokenizer", None)
    if "text" in towers and (backend is None or tok.pad_token_id is None):
        return None
    if "text" in towers:
        plan["tokenizer"] = {"pad_id": int(tok.pad_token_id), "pad_token": str(tok.pad_token),
                             "pad_type_id": int(getattr(tok, "pad_token_type_id", 0)),
                             "padding_side": tok.padding_side, "truncation_side": tok.truncation_side}
    from effiminivlm.protocol.cost import stored_profile

    prof = stored_profile(model, scorer.model_dir)  # stored in the folder too, where it is writable
    plan["cost"] = {"params_m": prof.params_m, "flops_g": prof.flops_g}  # for a read-only folder
    final = plan_dir(key)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        if "text" in towers:
            (tmp / "tokenizer.json").write_text(backend.to_str(), encoding="utf-8")
        (tmp / PLAN_NAME).write_text(json.dumps(plan, indent=1), encoding="utf-8")  # last: marks it whole
        if final.exists() and read_plan(key) is None:  # a stale plan (its graphs gone): replaced
            shutil.rmtree(final, ignore_errors=True)
        try:
            tmp.rename(final)  # atomic: a reader sees the whole plan or none
        except OSError:  # another process recorded the same plan first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        return None
    return final

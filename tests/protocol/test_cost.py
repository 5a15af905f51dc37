"""The protocol profile stored in a model folder: counted once, read back identical, recounted when stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.models.factory import create_model, create_tokenizer, load_model
from effiminivlm.protocol import cost
from effiminivlm.protocol.profile import profile_model as count


def profile_model(model) -> cost.StoredCost:
    return cost.StoredCost(count(model).to_dict())


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    cfg = load_recipe("tiny").model
    torch.manual_seed(0)
    out = tmp_path / "model"
    create_model(cfg, pretrained=False).save_pretrained(out, tokenizer=create_tokenizer(cfg))
    return out


def _no_count(*_a, **_k):
    raise AssertionError("counted again")


def test_the_profile_is_counted_once_then_read_back_identical(folder: Path, monkeypatch) -> None:
    model, _ = load_model(folder)
    assert cost.read_stored_profile(folder) is None  # an older folder: nothing stored
    first = cost.stored_profile(model, folder)
    assert first == profile_model(model)
    assert (folder / cost.COST_NAME).is_file()
    assert json.loads((folder / cost.COST_NAME).read_text())["profile"] == json.loads(
        json.dumps(count(model).to_dict()))  # the whole profile is kept
    monkeypatch.setattr(cost, "profile_model", _no_count)
    again = cost.stored_profile(model, folder)
    assert again == first and again.flops_g == first.flops_g and again.params_m == first.params_m


def test_a_stale_or_damaged_cost_file_is_recounted(folder: Path) -> None:
    model, _ = load_model(folder)
    cost.stored_profile(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["input"]["max_length"] = 16  # another canonical input: the stored count no longer holds
    (folder / "config.json").write_text(json.dumps(config))
    assert cost.read_stored_profile(folder) is None
    shorter, _ = load_model(folder)
    prof = cost.stored_profile(shorter, folder)
    assert prof.max_length == 16 and prof.flops_g < profile_model(model).flops_g
    (folder / cost.COST_NAME).write_text("{not json")
    assert cost.read_stored_profile(folder) is None
    assert cost.stored_profile(shorter, folder) == prof  # rewritten
    assert cost.read_stored_profile(folder) == prof


def test_a_folder_that_cannot_be_written_still_gets_its_counts(folder: Path, monkeypatch) -> None:
    model, _ = load_model(folder)

    def refuse(*_a, **_k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(cost, "write_json", refuse)
    assert cost.stored_profile(model, folder) == profile_model(model)
    assert not (folder / cost.COST_NAME).exists()


def test_a_copied_folder_keeps_its_counts(folder: Path, tmp_path: Path, monkeypatch) -> None:
    model, _ = load_model(folder)
    prof = cost.stored_profile(model, folder)
    copy = shutil.copytree(folder, tmp_path / "copy")
    monkeypatch.setattr(cost, "profile_model", _no_count)
    assert cost.stored_profile(model, copy) == prof  # keyed by content, not by path or mtime
    assert cost.store_profile(tmp_path / "nowhere", count(model)) is False  # no model folder there


def test_figures_are_read_by_name_in_their_json_form() -> None:
    stored = cost.StoredCost({"params_m": 1.5, "flops_g": float("nan")})
    assert stored.params_m == 1.5 and stored.flops_g is None  # as cost.json holds it
    assert stored == cost.StoredCost({"params_m": 1.5, "flops_g": None})
    with pytest.raises(AttributeError):
        _ = stored.missing

"""`effiminivlm recipes`: every recipe (packaged + a user folder) built with random init and counted."""

from __future__ import annotations

import json

import pytest

from effiminivlm.cli import main
from effiminivlm.config import list_recipes, load_recipe
from effiminivlm.models import create_model
from effiminivlm.protocol.formulas import efficiency, resource_cost
from effiminivlm.protocol.recipes import recipe_table, rows_markdown


@pytest.fixture
def user_recipes(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "small.yaml").write_text("base: tiny\nname: small\nmodel: {head: {hidden_dims: [8]}}\n"
                                       "train: {freeze_text: true}\n")
    (folder / "broken.yaml").write_text("base: tiny\nmodel: {image_encoder: {name: no_such_encoder}}\n")
    (folder / "notes.txt").write_text("not a recipe")
    return folder


def test_a_user_folder_is_listed_and_measured_next_to_the_packaged_recipes(user_recipes, capsys) -> None:
    assert main(["recipes", str(user_recipes), "--names"]) == 0
    assert capsys.readouterr().out.split() == [*list_recipes(), "broken", "small"]

    assert main(["recipes", str(user_recipes), "--only", "tiny", "--only", "small", "--only", "broken",
                 "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["recipes"]}
    assert set(rows) == {"tiny", "small", "broken"}
    tiny = create_model(load_recipe("tiny").model, pretrained=False)
    assert rows["tiny"]["params_m"] == pytest.approx(tiny.num_params() / 1e6)
    assert rows["tiny"]["trainable_m"] == rows["tiny"]["params_m"] and rows["tiny"]["source"] == "packaged"
    small = rows["small"]
    assert small["source"].endswith("small.yaml") and small["arch"] == "effiminivlm"
    assert small["params_m"] < rows["tiny"]["params_m"]  # the smaller head is really built
    text_m = tiny.num_params_by_part()["text_encoder"] / 1e6
    assert small["trainable_m"] == pytest.approx(small["params_m"] - text_m)  # its frozen text tower
    assert small["image_size"] == 64 and small["max_length"] == 64 and small["flops_g"] > 0
    assert small["c"] == pytest.approx(resource_cost(small["params_m"], small["flops_g"]))
    assert small["e"] == pytest.approx(efficiency(small["c"]))
    assert rows["broken"]["params_m"] is None and "no_such_encoder" in rows["broken"]["error"]


def test_markdown_table_and_errors(user_recipes, capsys) -> None:
    rows = recipe_table(user_recipes, packaged=False)
    text = rows_markdown(rows)
    assert text.splitlines()[0].startswith("| recipe | arch |")
    assert "| small | effiminivlm | timm / bert | 64px, 64 tok |" in text
    assert "| broken |" in text and "error: " in text and "canonical forward pass" in text
    assert main(["recipes", str(user_recipes / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["recipes", "--only", "nope"]) == 2
    assert "unknown recipe(s) nope" in capsys.readouterr().err
    assert main(["recipes", "--json", "--markdown"]) == 2

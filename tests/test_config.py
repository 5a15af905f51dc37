from __future__ import annotations

import pytest

from effiminivlm.config import Recipe, list_recipes, load_recipe
from effiminivlm.registry import Registry


def test_packaged_recipes_load_and_paper_matches_the_paper():
    assert {"paper", "offline", "tiny", "demo"} <= set(list_recipes())
    for name in list_recipes():
        assert isinstance(load_recipe(name), Recipe)
    paper = load_recipe("paper")
    assert paper.model.image_encoder.name == "efficientnet_b0" and paper.model.image_encoder.image_size == 224
    assert paper.model.text_encoder.max_length == 256 and paper.model.head.hidden_dims == [512, 256]
    t = paper.train
    assert (t.lr, t.batch_size, t.epochs, t.warmup_ratio, t.grad_clip, t.patience, t.huber_delta,
            t.weight_cap, t.loss) == (2e-5, 32, 10, 0.1, 1.0, 1, 1.0, 5.0, "weighted_huber")


def test_base_inheritance_and_overrides(tmp_path):
    demo = load_recipe("demo")
    offline = load_recipe("offline")
    assert demo.model.image_encoder.pretrained == offline.model.image_encoder.pretrained
    assert demo.model.image_encoder.image_size == 128 and demo.name == "demo"
    r = load_recipe("tiny", ["train.lr=0.5", "model.head.hidden_dims=[8]", "train.max_steps_per_epoch=null"])
    assert r.train.lr == 0.5 and r.model.head.hidden_dims == [8] and r.train.max_steps_per_epoch is None
    f = tmp_path / "mine.yaml"
    f.write_text("base: tiny\ntrain: {epochs: 7}\n")
    assert load_recipe(str(f)).train.epochs == 7 and load_recipe(str(f)).name == "mine"
    # the stored form reloads to the same recipe
    assert load_recipe(r.to_dict()) == r


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "train.lrr"),
    ("train.epochs=many", "train.epochs: expected an integer"),
    ("train.freeze_text=3", "expected true/false"),
    ("model.modalities=audio", "modalities"),
    ("nonsense", "key.sub=value"),
])
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_recipe("tiny", [override])


def test_a_folder_named_like_a_recipe_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # `make demo` writes into ./demo
    assert load_recipe("demo").name == "demo"


def test_unknown_recipe_and_base_cycle(tmp_path):
    with pytest.raises(KeyError, match="packaged recipes"):
        load_recipe("papr")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(ValueError, match="cycle"):
        load_recipe(str(a))


def test_registry_suggests_close_names():
    reg: Registry = Registry("widget")

    @reg.register()
    def round_widget() -> str:
        return "round"

    assert reg.build("round_widget") == "round" and "round_widget" in reg
    with pytest.raises(KeyError, match="did you mean round_widget"):
        reg.get("round_widgt")
    with pytest.raises(ValueError, match="twice"):
        reg.register("round_widget")(round_widget)

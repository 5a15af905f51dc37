from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from effiminivlm.config import EffiMiniVLMCfg, Recipe, list_recipes, load_recipe
from effiminivlm.errors import ConfigError, EffiMiniVLMError, UnknownNameError
from effiminivlm.registry import Registry


def test_packaged_recipes_load_and_paper_matches_the_paper():
    assert {"paper", "offline", "tiny", "demo"} <= set(list_recipes())
    for name in list_recipes():
        assert isinstance(load_recipe(name), Recipe)
    paper = load_recipe("paper")
    assert paper.model.image_encoder.name == "efficientnet_b0" and paper.input.image_size == 224
    assert paper.input.max_length == 256 and paper.model.head.hidden_dims == [512, 256]
    t = paper.train
    assert (t.lr, t.batch_size, t.epochs, t.warmup_ratio, t.grad_clip, t.patience, t.huber_delta,
            t.weight_cap, t.loss) == (2e-5, 32, 10, 0.1, 1.0, 1, 1.0, 5.0, "weighted_huber")


def test_base_inheritance_and_overrides(tmp_path):
    demo = load_recipe("demo")
    offline = load_recipe("offline")
    assert demo.model.image_encoder.pretrained == offline.model.image_encoder.pretrained
    assert demo.input.image_size == 128 and demo.name == "demo"
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
    ("model.modalities=audio", "model.modalities must be one of image_text, image, text, got 'audio'"),
    ("nonsense", "key.sub=value"),
    # ranges
    ("train.batch_size=0", r"train.batch_size must be an integer in \[1, 65536\], got 0"),
    ("train.huber_delta=0", "train.huber_delta must be a finite number and > 0, got 0.0"),
    ("train.weight_cap=-1", "train.weight_cap must be a finite number and > 0"),
    ("train.lr=0", "train.lr must be a finite number and > 0"),
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.lr=.inf", "train.lr must be a finite number"),
    ("train.epochs=0", "train.epochs must be an integer in"),
    ("train.warmup_ratio=1", "train.warmup_ratio must be a finite number and >= 0 and < 1"),
    ("train.patience=-1", "train.patience must be an integer >= 0"),
    ("train.grad_clip=0", "train.grad_clip"),
    ("train.seed=-1", "train.seed"),
    ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch"),
    ("train.eval_batch_size=0", "train.eval_batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("model.head.dropout=1", "model.head.dropout must be a finite number and >= 0 and < 1"),
    ("model.head.hidden_dims=[16,0]", r"model.head.hidden_dims\[1\] must be an integer in \[1, 65536\], "
                                      "got 0"),
    ("input.image_size=8", r"input.image_size must be an integer in "
                                         r"\[16, 4096\]"),
    ("input.image_size=100000", "input.image_size"),
    ("input.std=[0.5,0,0.5]", "input.std must be a finite number and > 0"),
    ("input.mean=[0.5]", "input.mean must be 3 numbers"),
    ("input.max_length=0", r"input.max_length must be an integer in \[1, 8192\]"),
    ("model.text_encoder.config.hidden_size=-1", "model.text_encoder.config.hidden_size must be an integer"),
    ("model.text_encoder.config.num_hidden_layers=0", "config.num_hidden_layers"),
    ("model.text_encoder.config.vocab_size=10000000000", "config.vocab_size"),
    ("model.text_encoder.config.num_attention_heads=5", "hidden_size 32 is not a multiple of "
                                                         "config.num_attention_heads 5"),
    ("model.text_encoder.config.hidden_dropout_prob=1.5", "config.hidden_dropout_prob"),
    # fixed choices
    ("train.precision=fp64", "train.precision must be one of auto, fp32, bf16, fp16, got 'fp64'"),
    ("data.augment=rotate", "data.augment must be one of none, flip"),
    ("data.images=all", "data.images must be one of first, mean"),
    ("model.text_encoder.pooling=max", "model.text_encoder.pooling must be one of cls, mean"),
    ("train.neighbours.ks=[0]", r"train.neighbours.ks must be an integer in \[1, 100000\], got 0"),
    ("train.neighbours.temperatures=[-1]", "train.neighbours.temperatures must be a finite number and >= 0"),
    ("train.neighbours.max_items=1", "train.neighbours.max_items must be an integer >= 2"),
    # an eval section is not part of a recipe (evaluate has its own options)
    ("eval.split=val", "unknown recipe key.s. eval"),
])
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_recipe("tiny", [override])
    assert "\n" not in str(info.value)


def test_the_neighbours_block_needs_the_stack() -> None:
    """One ridge over linear blocks (`joint`) cannot hold a nearest-neighbour mean: refused as it loads."""
    with pytest.raises(ConfigError, match="probe_combine must be stack with the neighbours block"):
        load_recipe("probe", ["train.probe_combine=joint"])
    assert load_recipe("probe", ["train.probe_combine=joint", "train.probe_features=[lexical,tower]"])


@pytest.mark.parametrize("override, message", [
    ("train.loss=weighted_hubr", "train.loss: unknown loss 'weighted_hubr'; did you mean weighted_huber"),
    ("model.head.name=mlpp", r"model.head.name: unknown head 'mlpp'; did you mean mlp\? \(known: mlp\)"),
    ("model.image_encoder.name=resnet", "model.image_encoder.name: unknown image encoder 'resnet'.*known: "
                                        "efficientnet_b0, tf_efficientnet_lite0, timm"),
    ("model.text_encoder.name=gpt", "model.text_encoder.name: unknown text encoder 'gpt'.*known: bert"),
])
def test_registered_names_are_checked_at_load(override, message):
    """config stays below models/training (it holds no registry); the training layer checks the names the
    moment a recipe is loaded for a run, before any data is read or model built."""
    from effiminivlm.training.losses import check_recipe_names

    recipe = load_recipe("tiny", [override])
    with pytest.raises(UnknownNameError, match=message):
        check_recipe_names(recipe)


def test_an_unknown_arch_fails_as_the_recipe_loads():
    """The `model:` section is typed by its arch's own dataclass: the arch is known before any key is read."""
    with pytest.raises(UnknownNameError, match=r"model.arch: unknown model arch 'clip'; did you mean "
                                               r"clip-fusion"):
        load_recipe("tiny", ["model.arch=clip"])


def test_python_tags_and_yaml_syntax_errors_are_one_line_and_never_run(tmp_path):
    marker = tmp_path / "made-by-yaml"
    tag = f'!!python/object/apply:os.mkdir ["{marker}"]'
    f = tmp_path / "evil.yaml"
    f.write_text(f"name: evil\ntrain:\n  lr: {tag}\n")
    with pytest.raises(ConfigError, match=f"{f}:3: invalid YAML: could not determine a constructor .*python"):
        load_recipe(str(f))
    with pytest.raises(ConfigError, match="override 'train.lr=!!python.*invalid YAML"):
        load_recipe("tiny", [f"train.lr={tag}"])
    assert not marker.exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\ntrain: {epochs: 2\nmodel: {}\n")
    with pytest.raises(ConfigError, match=f"{broken}:3: invalid YAML: expected ','") as info:
        load_recipe(str(broken))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="override 'model.head.hidden_dims=.1,2': invalid YAML"):
        load_recipe("tiny", ["model.head.hidden_dims=[1,2"])
    bad_base = tmp_path / "bad_base.yaml"
    bad_base.write_text("base: [tiny]\n")
    with pytest.raises(ConfigError, match="base must be a recipe name or path"):
        load_recipe(str(bad_base))


def _model_config(**changes):
    """A saved model's config.json content (the tiny recipe's model and input) with some values replaced."""
    recipe = load_recipe("tiny")
    data = {"format_version": 2, "model": recipe.model.section(), "input": asdict(recipe.input)}
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = data
        for k in path:
            node = node[k]
        node[last] = value
    return data


@pytest.mark.parametrize("key, value, message", [
    ("input.image_size", -5, "input.image_size must be an integer in"),
    ("input.max_length", 0, "input.max_length must be an integer in"),
    ("model.head.hidden_dims", [-3], r"model.head.hidden_dims\[0\] must be an integer in"),
    ("model.head.hidden_dims", [10**12], r"model.head.hidden_dims\[0\]"),
    ("model.head.dropout", 2.0, "model.head.dropout must be a finite number and >= 0 and < 1"),
    ("model.text_encoder.config.hidden_size", -1, "model.text_encoder.config.hidden_size"),
    ("model.text_encoder.config.num_hidden_layers", -2, "model.text_encoder.config.num_hidden_layers"),
    ("model.text_encoder.config.num_attention_heads", 0, "model.text_encoder.config.num_attention_heads"),
    ("model.text_encoder.config.intermediate_size", 0, "model.text_encoder.config.intermediate_size"),
    ("model.text_encoder.config.vocab_size", -1, "model.text_encoder.config.vocab_size"),
    ("model.text_encoder.config.num_attention_heads", 3, "hidden_size 32 is not a multiple of"),
    ("model.arch", "vit", "model.arch: unknown model arch 'vit'"),
])
def test_a_model_config_json_with_absurd_sizes_names_file_and_key(tmp_path, key, value, message):
    from effiminivlm.models import read_model_config

    (tmp_path / "config.json").write_text(json.dumps(_model_config(**{key: value})))
    with pytest.raises(EffiMiniVLMError, match=message) as info:
        read_model_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'config.json'}: ")
    (tmp_path / "config.json").write_text(json.dumps(_model_config()))
    assert isinstance(read_model_config(tmp_path), EffiMiniVLMCfg)


def test_a_folder_named_like_a_recipe_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # `make demo` writes into ./demo
    assert load_recipe("demo").name == "demo"


def test_unknown_recipe_and_base_cycle(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown recipe 'papr'; packaged recipes: .*demo, .*offline"):
        load_recipe("papr")
    with pytest.raises(ConfigError, match="recipe file .*missing.yaml does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(str(a))


def test_registry_suggests_close_names():
    reg: Registry = Registry("widget")

    @reg.register()
    def round_widget() -> str:
        return "round"

    assert reg.build("round_widget") == "round" and "round_widget" in reg
    with pytest.raises(UnknownNameError, match="did you mean round_widget") as info:
        reg.get("round_widgt")
    # a user error the CLI prints as is; still a KeyError for library callers, without KeyError's quotes
    assert isinstance(info.value, KeyError) and str(info.value).startswith("unknown widget 'round_widgt'")
    with pytest.raises(ValueError, match="twice"):
        reg.register("round_widget")(round_widget)

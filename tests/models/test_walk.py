"""Every architecture the package registers walks train -> save -> reload -> predict -> profile (walk.py)."""

from __future__ import annotations

import pytest

from effiminivlm.models import MODEL_ARCHS
from tests.models.walk import walk

BUILT_IN = sorted(n for n in MODEL_ARCHS.names() if MODEL_ARCHS.get(n).__module__.startswith("effiminivlm."))


def test_every_built_in_architecture_is_walked() -> None:
    assert {"effiminivlm", "clip-fusion", "smolvlm2-regressor", "minivitex", "cross-attention",
            "latent-query"} <= set(BUILT_IN)


@pytest.mark.parametrize("arch", BUILT_IN)
def test_architecture_walks_train_save_reload_predict_profile(arch, prepared, tmp_path, capsys) -> None:
    walk(arch, prepared, tmp_path, capsys)

"""The product text the model reads, and the normalisation every text field goes through.

Why one place: training, evaluation, prediction and the LoViF layout must build byte-identical text for
the same product, or a model is scored on inputs it never saw.
"""

from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^>]+>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_WS = re.compile(r"\s+")


def clean_text(value: str) -> str:
    """Strip HTML tags and URLs, unescape entities, drop tabs/newlines/CRs and fold whitespace."""
    if not value:
        return ""
    s = html.unescape(_TAG.sub(" ", value))
    s = _URL.sub(" ", s)
    return _WS.sub(" ", s).strip()


def product_text(category: str, title: str, features: str, description: str) -> str:
    """The paper's template: "Main category: …\\nTitle: …\\nFeatures: …\\nDescription: …"."""
    return f"Main category: {category}\nTitle: {title}\nFeatures: {features}\nDescription: {description}"

"""The product text the model reads, and the normalisation every text field goes through.

Why one place: training, evaluation, prediction and the LoViF layout must build byte-identical text for
the same product, or a model is scored on inputs it never saw.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

#: The prepared-schema columns the template reads, in its order.
TEXT_COLUMNS = ("category", "title", "features", "description")

# A tag starts with a letter, "/" or "!" right after "<", so "size < 5 and > 2" survives as text.
_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


def clean_text(value: str) -> str:
    """Unescape entities, strip HTML tags and URLs, drop tabs/newlines/CRs and fold whitespace.

    Entities are unescaped first so an escaped tag (``&lt;br&gt;``) is stripped too. The substring checks
    before each regex are only a fast path (``prepare`` cleans four fields of millions of rows); they never
    change the result.
    """
    if not value:
        return ""
    s = html.unescape(value)
    if "<" in s:
        s = _TAG.sub(" ", s)
    if "://" in s or "www." in s.lower():
        s = _URL.sub(" ", s)
    return " ".join(s.split())  # str.split() splits on exactly the Unicode whitespace that regex \s matches


def product_text(category: str, title: str, features: str, description: str) -> str:
    """The paper's template: "Main category: …\\nTitle: …\\nFeatures: …\\nDescription: …"."""
    return f"Main category: {category}\nTitle: {title}\nFeatures: {features}\nDescription: {description}"


def table_texts(table: pa.Table) -> list[str]:
    """The model's text of every row of a prepared-schema table (missing fields read as "")."""
    cols = [table.column(c).to_pylist() for c in TEXT_COLUMNS]
    return [product_text(*(v or "" for v in row)) for row in zip(*cols, strict=True)]

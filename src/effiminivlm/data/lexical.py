"""The lexical block: word 1-2-gram and char_wb 3-5-gram TF-IDF of the model's text, stored as plain data.

Why: on small real catalogs the rating signal sits in specific words (brand, product type, cheap
materials) that a bag of n-grams fits directly and a general-purpose sentence embedding compresses away
(docs/realdata.md: TF-IDF + ridge beat every frozen or fine-tuned tower on 5,773 Fashion items). The hybrid
probe and the words-only baseline beside every evaluation use this one definition, so the baseline is the
hybrid's own lexical block, not a weaker stand-in.

Saved models keep the vocabulary and idf as JSON (`to_data` / `from_data`): scoring rebuilds the vectorizers
from that data, nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from effiminivlm.errors import DataError

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = ["LexicalFeatures", "LexicalSettings"]


@dataclass(frozen=True)
class LexicalSettings:
    """The vectorizers' settings (`train.lexical`): n-gram ranges, minimum document frequency, size cap."""

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (3, 5)
    min_df: int = 2  # a term in one training item is an id, not signal
    max_features: int | None = None  # per vectorizer: the most frequent terms (None: all)

    @classmethod
    def from_cfg(cls, cfg: Any) -> LexicalSettings:
        """From a recipe's `train.lexical` (`config.LexicalCfg`)."""
        return cls(tuple(cfg.word_ngrams), tuple(cfg.char_ngrams), cfg.min_df, cfg.max_features)


def _vectorizer(kind: str, ngrams: Sequence[int], s: LexicalSettings) -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer  # here: every model import registers archs

    return TfidfVectorizer(analyzer="word" if kind == "word" else "char_wb", ngram_range=tuple(ngrams),
                           min_df=s.min_df, max_features=s.max_features, sublinear_tf=True,
                           strip_accents="unicode", lowercase=True, dtype=np.float64)


class LexicalFeatures:
    """Two TF-IDF vectorizers side by side; `transform(texts)` -> CSR [n, n_terms] float64 (each half of a
    row is L2-normalised, so a row's squared norm is 2 when both halves have terms)."""

    def __init__(self, settings: LexicalSettings | None = None) -> None:
        self.settings = settings or LexicalSettings()
        s = self.settings
        self.parts = {"word": _vectorizer("word", s.word_ngrams, s),
                      "char_wb": _vectorizer("char_wb", s.char_ngrams, s)}

    def fit(self, texts: Sequence[str]) -> LexicalFeatures:
        """Vocabulary and idf from the train texts only."""
        for name, vec in self.parts.items():
            try:
                vec.fit(list(texts))
            except ValueError as e:  # every term below min_df: too few or too uniform training texts
                raise DataError(f"TF-IDF ({name}) found no usable terms in {len(texts)} training texts: "
                                f"{e}") from None
        return self

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        return sp.hstack([vec.transform(list(texts)) for vec in self.parts.values()], format="csr")

    @property
    def n_terms(self) -> int:
        return sum(len(vec.vocabulary_) for vec in self.parts.values())

    def to_data(self) -> dict[str, Any]:
        """Plain JSON data: settings, and per vectorizer its terms in column order with their idf."""
        s = self.settings
        out: dict[str, Any] = {"word_ngrams": list(s.word_ngrams), "char_ngrams": list(s.char_ngrams),
                               "min_df": s.min_df, "max_features": s.max_features}
        for name, vec in self.parts.items():
            terms = sorted(vec.vocabulary_, key=vec.vocabulary_.__getitem__)
            out[name] = {"terms": terms, "idf": [float(v) for v in vec.idf_]}
        return out

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> LexicalFeatures:
        """Rebuild fitted vectorizers from `to_data`'s output (no refit, no pickle)."""
        settings = LexicalSettings(tuple(data["word_ngrams"]), tuple(data["char_ngrams"]),  # type: ignore[arg-type]
                                   int(data["min_df"]), data.get("max_features"))
        out = cls(settings)
        for name, vec in out.parts.items():
            part = data[name]
            if len(part["terms"]) != len(part["idf"]):
                raise ValueError(f"lexical {name}: {len(part['terms'])} terms, {len(part['idf'])} idf values")
            vec.vocabulary_ = {t: i for i, t in enumerate(part["terms"])}
            vec.idf_ = np.asarray(part["idf"], dtype=np.float64)
        return out

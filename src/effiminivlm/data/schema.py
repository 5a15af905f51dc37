"""The prepared-dataset schema in one place: columns, types, splits and the fields the filters need.

Why a module of its own: the readers (`data.readers`), the record normalisation (`data.meta`), `prepare`,
the LoViF reader and prediction all build or read the same table (docs/ARCHITECTURE.md, "Prepared
dataset"). Defining it once means a column cannot drift between the stage that writes it and the stages
that read it, and every limit a value must respect to fit its Arrow type is written next to the type.
"""

from __future__ import annotations

import pyarrow as pa

# Columns read from the official metadata (JSON keys / parquet columns); everything else is ignored.
META_COLUMNS = ("parent_asin", "main_category", "title", "average_rating", "rating_number", "features",
                "description", "details", "images",
                "price", "store", "videos")  # the last three: the `listing` column (data.listing)
# The prepared dataset's columns but `split`: what one normalised record holds. `listing` is a JSON object
# of the cold-start listing fields the text columns drop (store, price, counts: `data.listing`); null when
# absent.
ROW_SCHEMA = pa.schema([
    ("parent_asin", pa.string()), ("category", pa.string()), ("title", pa.string()),
    ("features", pa.string()), ("description", pa.string()), ("details", pa.string()),
    ("average_rating", pa.float32()), ("rating_number", pa.int64()), ("images", pa.list_(pa.string())),
    ("listing", pa.string()), ("source", pa.string()),
])
# The prepared dataset (`prepare --out DIR`): ROW_SCHEMA with `split` before `source`.
SCHEMA = ROW_SCHEMA.insert(ROW_SCHEMA.get_field_index("source"), pa.field("split", pa.string()))
SPLITS = ("train", "val", "test")
# Text fields the paper's `require_fields` filter needs non-empty (ratings are schema, checked by data.meta).
ESSENTIAL = ("category", "title", "features", "description")
#: The rating scale: targets, teacher scores and every prediction live on it (the one definition).
RATING_RANGE = (1.0, 5.0)
INT64_MAX = 2**63 - 1  # rating_number is int64: a larger count cannot be stored, so it is a bad row

"""The service's request/response models (pydantic, so /docs shows them) and its settings.

Why limits live here: every bound a client can hit (item count, text length, image bytes and pixels, queue,
timeout) is one field of `ServeSettings`, so the CLI, the app and the tests name the same numbers. Text
fields are bounded by the model itself (`Listing` is built per app with the configured `max_text_chars`), so
an over-long title is a 422 naming `items.N.title` before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model


@dataclass(frozen=True)
class ServeSettings:
    """Knobs of one server. `images_dir`: the only folder image paths may point into (None: no paths)."""

    images_dir: Path | None = None
    max_batch: int = 64  # items per model batch (predict's default batch size)
    max_wait_ms: float = 10.0  # how long the first queued item waits for company
    max_queue: int = 256  # items waiting or running; beyond it requests get 503 + Retry-After
    max_items: int = 64  # items per request (JSON); more -> 413
    max_csv_rows: int = 10_000  # rows per CSV upload; more -> 413
    max_text_chars: int = 20_000  # per text field; longer -> 422
    max_image_bytes: int = 10 * 1024 * 1024  # per image; larger -> 413
    max_image_pixels: int = 40_000_000  # per image (width x height); more -> 413
    max_body_bytes: int = 64 * 1024 * 1024  # per request body; larger -> 413
    request_timeout_s: float = 30.0  # queue + inference; longer -> 504
    retry_after_s: int = 1  # the Retry-After of a 503

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_items", "max_csv_rows", "max_text_chars",
                     "max_image_bytes", "max_image_pixels", "max_body_bytes", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")


class ImageData(BaseModel):
    """An image sent inline: standard base64 of the file's bytes (JPEG, PNG, WebP, ...)."""

    model_config = ConfigDict(extra="forbid")
    base64: str = Field(description="base64 of the image file")


ImageRef = str | ImageData  # a path inside the images folder, "upload:<part name>", a data: URI, or ImageData


def listing_model(max_text_chars: int) -> type[BaseModel]:
    """The listing schema (the metadata fields a rating depends on) with text bounded at `max_text_chars`."""
    def bounded(value: str | list[str]) -> str | list[str]:
        total = len(value) if isinstance(value, str) else sum(len(v) + 1 for v in value)
        if total > max_text_chars:
            raise ValueError(f"text of {total} characters is longer than {max_text_chars}")
        return value

    text = (Annotated[str | list[str], AfterValidator(bounded)],
            Field(default="", description="plain text or a list of lines"))
    return create_model(
        "Listing",
        __config__=ConfigDict(extra="ignore"),
        parent_asin=(str | None, Field(default=None, max_length=200, description="item id (echoed back)")),
        main_category=(str, Field(default="", max_length=max_text_chars)),
        category=(str | None, Field(default=None, max_length=max_text_chars, description="alias")),
        title=(str, Field(default="", max_length=max_text_chars)),
        features=text,
        description=text,
        images=(list[ImageRef], Field(default_factory=list, max_length=16, description=(
            "paths inside the server's images folder, 'upload:<part>' of a multipart request, "
            "data:image/...;base64 URIs, or {\"base64\": ...}; the first usable one feeds the model"))),
        store=(str | None, Field(default=None, max_length=max_text_chars, description="brand / publisher "
                                 "(the hybrid probe's store prior)")),
        price=(float | str | None, Field(default=None, description="price, a number or e.g. \"$12.99\"")),
    )


class ScoredItem(BaseModel):
    """One listing's result."""

    item_id: str
    score: float = Field(description="predicted average rating, clipped to [1, 5]")
    image_status: str = Field(description="ok (an image fed the model) or no_ref (text only)")
    model_image: str | None = Field(default=None, description="PNG data URI of the image the model saw "
                                    "(resized, as normalised and un-normalised back), when asked")


class ScoreResponse(BaseModel):
    """Scores in request order, with the model's cost by the protocol's rules."""

    items: list[ScoredItem]
    params_m: float
    flops_g: float


class ModelInfo(BaseModel):
    """What is being served."""

    version: str
    config: dict
    params_m: float
    flops_g: float
    c: float
    e: float
    image_size: int | None
    max_length: int | None
    images: str
    precision: str
    device: str
    batching: dict

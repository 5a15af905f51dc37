"""A synthetic product catalog in the official Amazon meta schema, with real image files: the embedded
default dataset for examples, tests and the README's main job (no download, no licence question).

Why it is built this way: a rating dataset is only a useful test bed for a *multimodal* model if neither
modality alone can explain it. Each item has two hidden attributes with equal effect sizes:

  * its **colour** (6 hues), drawn in the image and never written anywhere in the text;
  * its **quality tier** (6 tiers), written in the title, features, description and details (material and
    construction words) and never visible in the image (the drawing does not depend on it).

The multi-label target (`categories`, see `synth_categories`) follows the same split: colour labels only
the image shows, quality-line and audience labels only the text states.

    rating = clip(3.85 + category offset + 0.75 * colour effect + 0.75 * tier effect + N(0, 0.25), 1, 5)

rounded to one decimal like the real data. The effect levels are -1, -0.6, -0.2, 0.2, 0.6, 1 for both, so
each modality alone can explain at most ~45 % of the variance and both together ~90 %. Colour is what an
ImageNet CNN sees first and quality words are what a sentence encoder reads first, so a few thousand items
are enough. Pattern (solid / stripes / dots), pose, background and brand vary but carry no signal.

Layout written by `write_synth(out, n)`:
  out/meta_Synthetic.jsonl   official meta schema; image refs are RELATIVE paths (`images/<asin>.jpg`) that
                             `prepare` resolves against the meta file's folder
  out/images/                JPEG (and some PNG, half of them with a transparent background) files
  out/latent.csv             the hidden attributes per item (for analysis and tests; never a model input)
  out/lovif/input.csv        the same items in the LoViF 2026 test layout; `image_paths` are relative to
  out/lovif/images/          this folder, which holds hard links to (or copies of) out/images/ files
  out/lovif/truth.csv        parent_asin, average_rating

Item i is generated from its own seed sequence ``(seed, i)``: the same seed gives byte-identical files,
and a smaller `n` gives a prefix of a larger catalog (tests pin the digest of `n=50, seed=0`). An existing
catalog is replaced only with `overwrite=True` (`synth --overwrite`), and then whole and crash-safely.
Every item passes `prepare`'s default filters (all essential fields, > 30 characters of text, an image), so
`n` items give `n` prepared rows; real data's empty descriptions are opt-in (`missing_description_frac`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effiminivlm.data.synth_images import draw_product, encode_image
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.files import partial_dir, recover_dir, remove_stale_partials, replace_dir

LEVELS = (-1.0, -0.6, -0.2, 0.2, 0.6, 1.0)
BASE_RATING, EFFECT_SCALE, NOISE_STD = 3.85, 0.75, 0.25
META_NAME = "meta_Synthetic.jsonl"
LATENT_FIELDS = ["parent_asin", "category", "product", "colour", "pattern", "tier", "image_effect",
                 "text_effect", "noise", "average_rating"]
# Colour -> effect level index; deliberately not monotone in hue, so the model must learn the mapping.
COLOURS = {"red": ((196, 38, 44), 3), "orange": ((236, 136, 28), 0), "yellow": ((228, 204, 44), 4),
           "green": ((48, 148, 64), 2), "blue": ((38, 80, 200), 5), "purple": ((128, 48, 160), 1)}
CATEGORY_OFFSET = {"AMAZON FASHION": 0.05, "Home": -0.1, "Sports & Outdoors": 0.0}
# (main_category, product noun, drawn shape, material family, audiences)
PRODUCTS = [
    ("AMAZON FASHION", "Tote Bag", "bag", "textile", ("Women", "Everyone")),
    ("AMAZON FASHION", "Crossbody Purse", "bag", "textile", ("Women", "Girls")),
    ("AMAZON FASHION", "Crew Neck T-Shirt", "tshirt", "textile", ("Men", "Women", "Kids")),
    ("AMAZON FASHION", "Running Sneakers", "shoe", "footwear", ("Men", "Women")),
    ("AMAZON FASHION", "Baseball Cap", "cap", "textile", ("Men", "Everyone")),
    ("Home", "Throw Pillow Cover", "pillow", "textile", ("Living Room", "Bedroom")),
    ("Home", "Coffee Mug", "mug", "hardgoods", ("Kitchen", "Office")),
    ("Sports & Outdoors", "Insulated Water Bottle", "bottle", "hardgoods", ("Gym", "Hiking", "Everyone")),
    ("Sports & Outdoors", "Gym Duffel Bag", "bag", "textile", ("Men", "Women", "Everyone")),
]
MATERIALS = {  # by tier, worst first
    "textile": ("Thin Polyester", "Poly Blend", "Cotton Blend", "Heavy Canvas", "Organic Ring-Spun Cotton",
                "Full-Grain Leather Trim"),
    "footwear": ("Molded Plastic", "Synthetic", "Knit Textile", "Engineered Mesh", "Premium Suede",
                 "Full-Grain Leather"),
    "hardgoods": ("Thin Recycled Plastic", "BPA-Free Plastic", "Glazed Stoneware", "Borosilicate Glass",
                  "18/8 Stainless Steel", "Surgical-Grade Stainless Steel"),
}
TITLE_WORDS = (("Cheap", "Flimsy Budget"), ("Economy", "Basic"), ("Classic", "Everyday"),
               ("Durable", "Sturdy"), ("Premium", "Professional-Grade"),
               ("Luxury Handcrafted", "Heirloom-Quality"))
QUALITY_FEATURES = (
    ("Thin, flimsy build; may show defects out of the box", "Low-cost construction with rough, uneven edges",
     "Budget build that may wear out after a few uses"),
    ("Lightweight basic construction for occasional use", "Entry-level build with simple finishing",
     "Economy materials; not intended for heavy daily use"),
    ("Standard construction suitable for regular use", "Ordinary finish with standard components",
     "Average build quality for everyday needs"),
    ("Sturdy construction with reinforced stress points", "Durable build that holds up to daily use",
     "Solid components and a clean, even finish"),
    ("Heavy-duty reinforced construction, quality checked by hand",
     "Premium components built for years of use",
     "Precision finishing with tight tolerances and no rough edges"),
    ("Master-crafted heirloom build, inspected piece by piece",
     "Top-grade components engineered to last decades",
     "Backed by a lifetime craftsmanship warranty and free repairs"),
)
QUALITY_DESCRIPTIONS = (
    ("A bargain option made with the cheapest available materials; expect a short lifespan.",
     "Made to hit the lowest possible price, so corners were cut on materials and finishing."),
    ("A simple, economical piece with basic materials, fine for light or occasional use.",
     "Keeps costs down with entry-level materials and a no-frills finish."),
    ("A dependable everyday piece made from standard materials.",
     "Balanced between price and build, with ordinary materials and finishing."),
    ("Built with durable materials and reinforced where it matters, it holds up to daily use.",
     "Sturdy materials and careful assembly give it a solid feel and a long life."),
    ("Crafted from premium materials with reinforced construction and hand inspection.",
     "Premium materials and meticulous finishing make it a long-term favourite."),
    ("An heirloom piece, handcrafted by skilled artisans from the finest materials available.",
     "Built without compromise from top-grade materials and finished entirely by hand."),
)
NEUTRAL_FEATURES = (
    "Imported", "Ships in a recyclable box", "Easy to clean: wipe with a damp cloth",
    "Makes a thoughtful gift for birthdays, holidays and anniversaries",
    "Suitable for travel, work, weekends and everyday errands", "Compact design saves space at home",
    "Designed in our studio and tested by our team", "Satisfaction guaranteed: contact us with any questions",
)
NEUTRAL_DESCRIPTIONS = (
    "{brand} designs everyday products for modern homes and busy lives.",
    "Every {brand} order ships within two business days.",
    "Please allow slight variation in size due to manual measurement.",
    "Our team is based in Portland and answers every message within a day.",
)
BRANDS = ("Northwind", "Larkspur & Co", "Velora", "Trailmark", "Casa Bella", "Urban Nest", "Peakline",
          "Maple Row", "Kestrel Goods", "Solenne")
_ID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


def _pick(rng: np.random.Generator, options: tuple[Any, ...] | list[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


_ID_SPACE = 36**8
_ID_STEP = 323_553_491_989  # coprime to 36 (odd, not a multiple of 3): index -> id is a bijection


def asin_for(seed: int, index: int) -> str:
    """A 10-character ASIN-like id ("B0" + 8 base-36 digits), distinct for every index of one seed.

    An affine map modulo 36**8 with a step coprime to 36 is a permutation, so ids never collide within a
    catalog of any size up to 2.8e12 items (a hash would start colliding around a million items)."""
    offset = int.from_bytes(hashlib.sha256(f"synth:{seed}".encode()).digest()[:8], "big")
    value = (offset + _ID_STEP * index) % _ID_SPACE
    out = ""
    for _ in range(8):
        value, r = divmod(value, 36)
        out += _ID_CHARS[r]
    return "B0" + out



# ---------------------------------------------------------------------------------------------- items

# The multi-label target (Amazon's `categories`): every item's labels come from the image (its colour
# collection), from the text (its quality line and audience) and from both (category, product type), so a
# classifier needs both modalities: an image-only model cannot tell the quality line, a text-only one the
# colour. Derived from the item's own attributes, so no random draw is added and the rest of the item is
# unchanged.
QUALITY_LINES = ("Value Buys", "Value Buys", "Everyday Basics", "Everyday Basics", "Premium Selection",
                 "Premium Selection")


def synth_categories(category: str, noun: str, audience: str, colour: str, tier: int) -> list[str]:
    """[main category, product type, audience (text), "<Colour> Collection" (image), quality line (text)]."""
    return [category, noun, f"For {audience}", f"{colour.title()} Collection", QUALITY_LINES[tier]]



@dataclass
class SynthItem:
    """One generated product: the meta record, its latent attributes and its encoded image files."""

    record: dict[str, Any]
    latent: dict[str, Any]
    images: list[tuple[str, bytes]]  # (path relative to the catalog folder, file bytes)


def make_item(index: int, seed: int = 0, image_size: int = 96, missing_description_frac: float = 0.0
              ) -> SynthItem:
    """Item `index` of the catalog for `seed` (independent of how many items are generated).

    Every item passes `prepare`'s default filters unless `missing_description_frac` > 0: that fraction gets
    an empty description, like part of the real data, and is then dropped by `prepare --require-fields`."""
    rng = np.random.default_rng([seed, index])
    category, noun, shape, family, audiences = _pick(rng, PRODUCTS)
    colour = _pick(rng, sorted(COLOURS))
    tier = int(rng.integers(len(LEVELS)))
    pattern = _pick(rng, ("solid", "solid", "stripes", "dots"))
    brand, audience = _pick(rng, BRANDS), _pick(rng, audiences)
    asin = asin_for(seed, index)

    image_effect, text_effect = LEVELS[COLOURS[colour][1]], LEVELS[tier]
    noise = float(rng.normal(0.0, NOISE_STD))
    raw = BASE_RATING + CATEGORY_OFFSET[category] + EFFECT_SCALE * (image_effect + text_effect) + noise
    rating = round(min(5.0, max(1.0, raw)), 1)
    rating_number = max(1, int(round(float(np.exp(rng.normal(3.2, 1.3))))))

    material = MATERIALS[family][tier]
    title = f"{brand} {_pick(rng, TITLE_WORDS[tier])} {material} {noun} for {audience}"
    if rng.random() < 0.5:
        title += f", {_pick(rng, ('Pack of 1', 'Gift Ready', 'New Edition', 'Classic Fit', 'Standard Size'))}"
    dims = [round(float(rng.uniform(3, 20)), 1) for _ in range(3)]
    quality = [QUALITY_FEATURES[tier][j] for j in sorted(rng.choice(3, size=2, replace=False))]
    neutral = [NEUTRAL_FEATURES[j] for j in sorted(rng.choice(len(NEUTRAL_FEATURES), size=3, replace=False))]
    features = [f"Made of {material.lower()}", *quality,
                f"Dimensions: {dims[0]} x {dims[1]} x {dims[2]} inches", *neutral]
    description: list[str] = []
    if rng.random() >= missing_description_frac:  # one draw either way: the stream does not depend on it
        description = [_pick(rng, QUALITY_DESCRIPTIONS[tier])]
        extra = rng.choice(len(NEUTRAL_DESCRIPTIONS), size=int(rng.integers(0, 3)), replace=False)
        description += [NEUTRAL_DESCRIPTIONS[j].format(brand=brand) for j in extra]

    fmt = "PNG" if rng.random() < 0.2 else "JPEG"
    ext = "png" if fmt == "PNG" else "jpg"
    names = [f"images/{asin}.{ext}"] + ([f"images/{asin}_PT01.{ext}"] if rng.random() < 0.5 else [])
    files, refs = [], []
    for k, name in enumerate(names):
        transparent = fmt == "PNG" and k == 0 and rng.random() < 0.5
        img = draw_product(rng, shape, COLOURS[colour][0], pattern, image_size, transparent=transparent)
        files.append((name, encode_image(img, fmt)))
        hi_res = name if rng.random() < 0.8 else None
        refs.append({"thumb": name, "large": name, "variant": "MAIN" if k == 0 else f"PT{k:02d}",
                     "hi_res": hi_res})

    price = (None if rng.random() < 0.3
             else round(float(8 * (1 + 0.35 * tier) * np.exp(rng.normal(0, 0.3))), 2))
    record = {
        "main_category": category, "title": title, "average_rating": rating, "rating_number": rating_number,
        "features": features, "description": description, "price": price, "images": refs, "videos": [],
        "store": brand, "categories": synth_categories(category, noun, audience, colour, tier),
        "details": {"Brand": brand, "Material": material, "Department": audience,
                    "Package Dimensions": f"{dims[0]} x {dims[1]} x {dims[2]} inches",
                    "Item model number": f"{brand[:3].upper()}-{int(rng.integers(1000, 10000))}",
                    "Date First Available": f"{_pick(rng, MONTHS)} {int(rng.integers(1, 29))}, "
                                            f"{int(rng.integers(2015, 2024))}"},
        "parent_asin": asin, "bought_together": None,
    }
    latent = {"parent_asin": asin, "category": category, "product": noun, "colour": colour,
              "pattern": pattern, "tier": tier, "image_effect": image_effect, "text_effect": text_effect,
              "noise": round(noise, 4), "average_rating": rating}
    return SynthItem(record=record, latent=latent, images=files)


# ---------------------------------------------------------------------------------------------- writing


@dataclass
class SynthSummary:
    """What `write_synth` wrote."""

    out: Path
    items: int
    images: int
    image_bytes: int
    seconds: float
    missing_descriptions: int = 0

    @property
    def meta_path(self) -> Path:
        """The meta JSONL to give `prepare`."""
        return self.out / META_NAME

    def __str__(self) -> str:
        text = (f"{self.items} items, {self.images} images ({self.image_bytes / 1e6:.1f} MB) in "
                f"{self.seconds:.1f} s -> {self.meta_path}; LoViF layout in {self.out / 'lovif'}")
        if self.missing_descriptions:
            text += f"; {self.missing_descriptions} items without a description (prepare drops them)"
        return text


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link keeps the LoViF folder free (a symlink would be refused as leaving the folder)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _check_out(root: Path, overwrite: bool) -> None:
    """`root` may be new, empty, or (with `overwrite`) an earlier catalog; anything else is refused.

    An earlier catalog is replaced whole, never regenerated in place: stale files of a bigger or differently
    seeded run cannot linger, and a crash midway leaves the old catalog intact (see `write_synth`)."""
    recover_dir(root)  # a run killed between the two renames of `replace_dir` left only the backup
    remove_stale_partials(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"synth: --out {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not (root / META_NAME).is_file():
            raise DataError(f"synth: --out {root} is not empty and holds no synthetic catalog ({META_NAME}); "
                            "refusing to write into it, even with --overwrite")
        if not overwrite:
            raise DataError(f"synth: --out {root} already holds a synthetic catalog; pass --overwrite to "
                            "replace it")


def write_synth(out: str | os.PathLike[str], n: int, seed: int = 0, image_size: int = 96,
                missing_description_frac: float = 0.0, progress: bool = True,
                overwrite: bool = False) -> SynthSummary:
    """Write an `n`-item catalog (meta JSONL, images, latent.csv, LoViF layout) to `out`.

    `out` must be empty, new, or (with `overwrite`) an earlier catalog. The catalog is written to a hidden
    folder beside `out` and published with `files.replace_dir`, so a crash never leaves half a catalog and
    never loses the one being replaced. With the default `missing_description_frac=0` every item survives
    `prepare`'s default filters, so `n` items give `n` prepared rows.
    """
    import time

    if n < 1:
        raise EffiMiniVLMError(f"synth: --n must be at least 1, got {n}")
    if seed < 0:
        raise EffiMiniVLMError(f"synth: --seed must be >= 0, got {seed}")
    if not 32 <= image_size <= 4096:  # the models' own image-size range; 60,000 px would not fit in memory
        raise EffiMiniVLMError(f"synth: --image-size must be in [32, 4096] pixels, got {image_size}")
    if not 0.0 <= missing_description_frac <= 1.0:
        raise EffiMiniVLMError(f"synth: --missing-description-frac must be in [0, 1], got "
                               f"{missing_description_frac}")
    start = time.perf_counter()
    root = Path(out)
    _check_out(root, overwrite)
    tmp = partial_dir(root)
    try:
        counts = _write_catalog(tmp, n, seed, image_size, missing_description_frac, progress)
        replace_dir(tmp, root)
    finally:  # on success `tmp` was renamed to `root`; on any error or interrupt the partial catalog goes
        shutil.rmtree(tmp, ignore_errors=True)
    return SynthSummary(root, n, *counts[:2], time.perf_counter() - start, counts[2])


def _write_catalog(root: Path, n: int, seed: int, image_size: int, missing_description_frac: float,
                   progress: bool) -> tuple[int, int, int]:
    """Write the catalog's files into the (new, empty) folder `root`; returns (images, bytes, missing)."""
    from tqdm.auto import tqdm

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "lovif" / "images").mkdir(parents=True, exist_ok=True)
    n_images = n_bytes = n_missing = 0
    with (root / META_NAME).open("w", encoding="utf-8") as meta, \
            (root / "latent.csv").open("w", encoding="utf-8", newline="") as latent_f, \
            (root / "lovif" / "input.csv").open("w", encoding="utf-8", newline="") as input_f, \
            (root / "lovif" / "truth.csv").open("w", encoding="utf-8", newline="") as truth_f:
        latent_w = csv.DictWriter(latent_f, fieldnames=LATENT_FIELDS, lineterminator="\n")
        latent_w.writeheader()
        input_w = csv.writer(input_f, lineterminator="\n")
        input_w.writerow(["parent_asin", "main_category", "title", "features", "description", "image_paths"])
        truth_w = csv.writer(truth_f, lineterminator="\n")
        truth_w.writerow(["parent_asin", "average_rating"])
        for i in tqdm(range(n), desc="synth", unit="item", disable=not progress):
            item = make_item(i, seed, image_size, missing_description_frac)
            rec = item.record
            n_missing += not rec["description"]
            meta.write(json.dumps(rec, ensure_ascii=False) + "\n")
            latent_w.writerow(item.latent)
            names = []
            for rel, data in item.images:
                (root / rel).write_bytes(data)
                name = Path(rel).name
                _link_or_copy(root / rel, root / "lovif" / "images" / name)
                names.append(name)
                n_images, n_bytes = n_images + 1, n_bytes + len(data)
            # features / description as list literals, the way a pandas export of the meta lists reads
            input_w.writerow([rec["parent_asin"], rec["main_category"], rec["title"], str(rec["features"]),
                              str(rec["description"]), ";".join(names)])
            truth_w.writerow([rec["parent_asin"], rec["average_rating"]])
    return n_images, n_bytes, n_missing

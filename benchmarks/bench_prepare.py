"""Throughput and peak memory of `effiminivlm prepare` on a large generated `meta_*.jsonl.gz` (not a test).

Generates (once, cached) N records in the official Amazon Reviews 2023 meta schema with the real data's shape:
~2.4 KB a line, a ~95-character title, ~5 feature bullets (~390 characters), a description that is empty for
~40% of items, a 6-key `details` dict, 1-9 images of four URLs each, a few HTML tags and URLs to strip, and
ratings skewed to 4-5 like the real distribution. Then runs the real CLI in a child process and reports rows/s
(rows read / wall time) and the child's peak RSS.

    .venv/bin/python benchmarks/bench_prepare.py                 # 1,000,000 rows (about 2 minutes here)
    .venv/bin/python benchmarks/bench_prepare.py --rows 100000   # quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

WORDS = [
    "soft", "cotton", "women", "men", "casual", "fit", "slim", "stretch", "waist", "pocket",
    "zipper", "leather", "strap", "adjustable", "size", "color", "black", "white", "blue", "navy",
    "red", "lightweight", "breathable", "comfortable", "durable", "travel", "gift", "daily", "wear",
    "machine", "wash", "imported", "polyester", "spandex", "sleeve", "collar", "button",
    "crossbody", "wallet", "canvas", "vintage", "classic", "summer", "winter", "outdoor", "running",
    "sport", "elegant", "party", "wedding", "cute", "pattern", "print", "design",
]
VARIANTS = ["MAIN"] + [f"PT{i:02d}" for i in range(1, 9)]


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choices(WORDS, k=n_words)).capitalize()


def _record(rng: random.Random, i: int, pool: list[str]) -> dict:
    n_img = rng.choice([1, 1, 2, 3, 4, 5, 5, 6, 6, 7, 7, 7, 8, 9, 0])  # ~7% without images
    url = "https://m.media-amazon.com/images/I/"
    images = [{"thumb": f"{url}{i:08d}{k}._AC_US40_.jpg", "large": f"{url}{i:08d}{k}._AC_.jpg",
               "variant": VARIANTS[k], "hi_res": f"{url}{i:08d}{k}X._AC_UL1500_.jpg" if k % 4 else None}
              for k in range(n_img)]
    features = rng.sample(pool, rng.choice([0, 3, 4, 5, 5, 6, 7])) if rng.random() > 0.05 else []
    description = rng.sample(pool, rng.randint(1, 3)) if rng.random() > 0.4 else []
    if description and rng.random() < 0.1:
        description[0] = f"<p>{description[0]}<br>see https://example.com/item/{i}</p>"
    rating = min(5.0, max(1.0, round(rng.betavariate(5, 1.3) * 4 + 1, 1)))
    return {"main_category": "AMAZON FASHION", "title": _sentence(rng, rng.randint(8, 22)),
            "average_rating": rating, "rating_number": int(rng.paretovariate(1.1)) + 1,
            "features": features, "description": description, "price": round(rng.uniform(5, 80), 2) or None,
            "images": images, "videos": [], "store": "Brand" + str(i % 997),
            "categories": ["Clothing, Shoes & Jewelry", "Women"],
            "details": {"Package Dimensions": "8.31 x 5.55 x 0.91 inches; 3.63 Ounces",
                        "Item model number": f"M-{i}", "Department": rng.choice(["Women", "Men", "Girls"]),
                        "Date First Available": "July 11, 2019", "Manufacturer": "Maker",
                        "Country of Origin": "China"},
            "parent_asin": f"B{i:09d}", "bought_together": None}


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    pool = [f"{_sentence(rng, rng.randint(8, 14))}: {_sentence(rng, rng.randint(6, 16))}"
            for _ in range(5000)]
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wb", compresslevel=1) as f:
        for i in range(rows):
            f.write(orjson.dumps(_record(rng, i, pool)) + b"\n")
    tmp.rename(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "effiminivlm-bench",
                    help="where the generated file (cached) and the prepared output go")
    args = ap.parse_args()
    src = args.workdir / f"meta_Bench_{args.rows}.jsonl.gz"
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        t0 = time.perf_counter()
        generate(src, args.rows)
        print(f"generated {src} ({src.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    out = args.workdir / "prepared"
    shutil.rmtree(out, ignore_errors=True)
    cli = Path(sys.executable).with_name("effiminivlm")
    t0 = time.perf_counter()
    subprocess.run([str(cli), "prepare", str(src), "--out", str(out)], check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = json.loads((out / "summary.json").read_text())
    print(json.dumps({"rows_read": summary["rows_read"], "kept": summary["kept"], "seconds": round(wall, 1),
                      "rows_per_s": round(summary["rows_read"] / wall), "peak_rss_mb": round(peak_mb)}))


if __name__ == "__main__":
    main()

"""Reading text in images (indexer/enrich/ocr.py) with the real PP-OCRv4 models: recall, character accuracy, speed.

Quality: words and numbers rendered on the spot with fonts from Debian packages (fonts-dejavu-core,
fonts-liberation), at 12 to 80 px, dark on light and light on dark, rotated up to 3 degrees, slightly blurred,
saved as JPEG (quality 75) on photo-like backgrounds; plus receipts (several lines). They are indexed with
`--ocr` into a store (full-size ViT-B/32, random weights), then each rendered word is searched with
`--mode text`: recall is the share of words whose image is in the top 10. Character accuracy compares the
stored text with what was rendered (difflib's ratio, case-blind).

Speed: the reader on text-free photos and on images with a line of text, against the wheel's own pipeline
with its defaults; then `index` and `index --ocr` on a folder where one image in ten holds text.

    python -m bench.ocr [--per-condition 2]
"""

import argparse
import difflib
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bench.indexing import bench_photo, console, grain, load, vit_b32
from bench.smoke import DATA, SMOKE, announce, pick
from indexer.enrich.ocr import Reader
from indexer.indexing import index_folder
from indexer.models.cpu import cpu_line
from indexer.settings import Settings
from indexer.store import TextLine, open_store
from search.service import Service

FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
]
SIZES = pick((12, 16, 20, 28, 40, 80), (20,))
SPEED_IMAGES, MIXED_IMAGES = pick(10, 2), pick(100, 10)  # per kind for the reader's speed; the folder, 1 in 10 text
WORDS = (
    "invoice station harbour bakery pharmacy garden museum ticket platform coffee espresso exit entrance parking "
    "Bahnhofstrasse Marktplatz Rathaus library hospital bicycle theatre keyboard warranty delivery"
).split()
RECEIPT_ITEMS = ["Bread", "Milk", "Apples", "Cheese", "Coffee", "Butter", "Tomatoes", "Pasta"]


def text_image(rng, words: str, font: str, size: int, dark_on_light: bool, seed: int) -> Image.Image:
    """A photo-like 800x450 image with a band holding `words`, rotated slightly, blurred a little."""
    image = bench_photo(seed, (800, 450), grain((800, 450)))
    band = Image.new("RGB", (760, int(size * 2.2)), (240, 238, 230) if dark_on_light else (30, 32, 40))
    ImageDraw.Draw(band).text(
        (12, int(size * 0.5)), words, fill=(20, 20, 20) if dark_on_light else (235, 235, 235),
        font=ImageFont.truetype(font, size),
    )  # fmt: skip
    band = band.rotate(float(rng.uniform(-3, 3)), expand=True, fillcolor=(128, 128, 128))
    image.paste(band, (20, int(rng.integers(20, max(21, 450 - band.height - 10)))))
    return image.filter(ImageFilter.GaussianBlur(0.6))


def receipt(rng, font: str, seed: int) -> tuple[Image.Image, list[str]]:
    """A receipt: a shop name, items with prices, a total, at 24 px."""
    items = rng.choice(RECEIPT_ITEMS, 4, replace=False)
    prices = [f"{rng.integers(1, 20)}.{rng.integers(0, 100):02d}" for _ in items]
    lines = [f"SHOP {seed}", *(f"{item} {price}" for item, price in zip(items, prices, strict=True))]
    lines.append(f"TOTAL {sum(float(p) for p in prices):.2f}")
    image = Image.new("RGB", (600, 80 + 44 * len(lines)), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((40, 40 + 44 * n), line, fill=(25, 25, 25), font=ImageFont.truetype(font, 24))
    return image.rotate(float(rng.uniform(-2, 2)), expand=True, fillcolor=(120, 110, 100)), lines


def make_quality_set(folder: Path, per_condition: int) -> dict[str, tuple[str, list[str]]]:
    """{file name: (condition, rendered words)} of the rendered set, written into `folder`."""
    rng, made, seed = np.random.default_rng(0), {}, 0
    for size in SIZES:
        for font in FONTS:
            for dark_on_light in (True, False):
                for _ in range(per_condition):
                    seed += 1
                    words = [str(rng.choice(WORDS)), f"{rng.integers(10, 999)}.{rng.integers(0, 100):02d}"]
                    name = f"text-{seed:04d}.jpg"
                    text_image(rng, " ".join(words), font, size, dark_on_light, seed).save(folder / name, quality=75)
                    made[name] = (f"{size} px", words)
    for n in range(per_condition * 4):
        image, lines = receipt(rng, FONTS[n % len(FONTS)], n)
        name = f"receipt-{n:03d}.jpg"
        image.save(folder / name, quality=75)
        made[name] = ("receipt", [word for line in lines for word in line.split()])
    return made


def quality(tmp: Path, per_condition: int) -> None:
    folder = tmp / "quality"
    folder.mkdir()
    made = make_quality_set(folder, per_condition)
    settings = Settings(store=tmp / "quality-store", model=str(vit_b32()), cache_dir=DATA / "cache")
    started = time.perf_counter()
    index_folder(folder, settings, show_progress=False, ocr=True)
    console.print(f"indexed {len(made)} rendered images with --ocr in {time.perf_counter() - started:.0f} s")
    engine = Service(Settings(store=settings.store))
    store = open_store(settings.store)
    with store.session() as s:
        lines = s.query(TextLine).all()
    by_id: dict[int, list[str]] = {}
    for line in lines:
        by_id.setdefault(line.image_id, []).append(line.text)
    ids = {path.rsplit("/", 1)[-1]: i for i, path in store.paths(list(range(1, len(made) + 10))).items()}
    per: dict[str, list[tuple[int, int, float]]] = {}
    for name, (condition, words) in made.items():
        found = sum(ids[name] in {h.id for h in engine.search(word, "text", k=10)} for word in words)
        read = " ".join(by_id.get(ids[name], []))
        accuracy = difflib.SequenceMatcher(None, " ".join(words).lower(), read.lower()).ratio()
        per.setdefault(condition, []).append((found, len(words), accuracy))
    console.print(f"{'condition':10} {'images':>6} {'search recall@10':>16} {'char accuracy':>13}")
    for condition, rows in per.items():
        recall = sum(f for f, _, _ in rows) / sum(n for _, n, _ in rows)
        console.print(f"{condition:10} {len(rows):6} {recall:16.3f} {np.mean([a for _, _, a in rows]):13.3f}")


def speed(tmp: Path) -> None:
    from rapidocr_onnxruntime import RapidOCR

    rng, reader, wheel = np.random.default_rng(1), Reader(), RapidOCR()
    free = [np.asarray(bench_photo(100 + n, (640, 360), grain((640, 360)))) for n in range(SPEED_IMAGES)]
    texts = [
        np.asarray(text_image(rng, f"{random.Random(n).choice(WORDS)} 12.{n:02d}", FONTS[0], 32, True, 200 + n)
                   .resize((640, 360)))
        for n in range(SPEED_IMAGES)
    ]  # fmt: skip
    reader.read(texts[0])  # warm
    for label, images in (("text-free photos", free), ("a line of text", texts)):
        started = time.perf_counter()
        found = [reader.read(image) for image in images]
        clipdex_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for image in images:
            wheel(np.ascontiguousarray(image[:, :, ::-1]))
        wheel_seconds = time.perf_counter() - started
        console.print(
            f"640x360, {label}: {len(images) / clipdex_seconds:.2f} images/s as clipdex reads "
            f"({sum(bool(f) for f in found)}/{len(images)} with text), {len(images) / wheel_seconds:.2f} images/s "
            "with the wheel's own pipeline and defaults"
        )
    folder = tmp / "mixed"
    folder.mkdir()
    for n in range(MIXED_IMAGES):
        if n % 10 == 0:
            image = text_image(rng, f"{WORDS[n // 10]} {n}.50", FONTS[n // 10 % 4], 36, True, 300 + n)
        else:
            image = bench_photo(400 + n, (800, 450), grain((800, 450)))
        image.save(folder / f"img{n:03d}.jpg", quality=85)
    runs = {}
    for ocr in (False, True):
        settings = Settings(store=tmp / f"mixed-store-{ocr}", model=str(vit_b32()), cache_dir=DATA / "cache")
        started = time.perf_counter()
        summary = index_folder(folder, settings, show_progress=False, ocr=ocr)
        runs[ocr] = MIXED_IMAGES / (time.perf_counter() - started)
        console.print(f"index{' --ocr' if ocr else ''}: {runs[ocr]:.2f} images/s  ({summary.line()})")
    ratio = runs[True] / runs[False]
    console.print(f"index --ocr / index = {ratio:.2f} (target >= 0.5: {'met' if ratio >= 0.5 else 'missed'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK") == "1"
    parser.add_argument("--per-condition", type=int, default=1 if quick else 2)
    args = parser.parse_args()
    console.print(cpu_line())
    announce(console.print)
    missing = [font for font in FONTS if not Path(font).exists()]
    if missing and SMOKE and Path(FONTS[0]).exists():  # which face renders the text matters to the figures only
        FONTS[:] = [font if Path(font).exists() else FONTS[0] for font in FONTS]
    elif missing:
        raise SystemExit(f"missing fonts {missing}: apt-get install fonts-dejavu-core fonts-liberation")
    with tempfile.TemporaryDirectory(dir="data") as tmp:
        speed(Path(tmp))
        quality(Path(tmp), args.per_condition)
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"({load()})")


if __name__ == "__main__":
    main()

"""Photo-like test images, made from a seed."""

from pathlib import Path

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like image: smooth gradients, a few shapes and some noise, different for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-0.6, 0.6, (3, 2))
    img = np.stack([base[c] + slope[c, 0] * x * 240 / w + slope[c, 1] * y * 240 / h for c in range(3)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * min(w, h)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_photos(folder: Path, count: int, start: int = 0, size=(320, 240)) -> list[Path]:
    """Write `count` distinct JPEG photos named img{seed}.jpg into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(start, start + count):
        path = folder / f"img{seed:03d}.jpg"
        photo(seed, size).save(path, quality=90)
        paths.append(path)
    return paths

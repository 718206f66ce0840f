"""A toy world of coloured shapes: pictures drawn with Pillow, their captions, and folders of them for tests.

Every picture holds one shape (circle, square, triangle, star, ...) of one colour, at a random place, size
and rotation, on a grey background of random lightness with a little noise. The world is small enough for
a tiny CLIP to learn it in minutes (tests/support/train_toyworld.py) and rich enough to test what search
means: a colour is shared by several shapes, a shape by several colours, so "something yellow" and "a star"
are common subjects while "a red circle" is a rarer one, and nothing in it is a dog.

Truth is kept beside the pictures, never in their names: file names are searchable text in clipdex.
"""

import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 48  # pixels per side; the model sees them as they are (no resize, no crop)
SUPERSAMPLE = 4  # shapes are drawn this much larger, then reduced: smooth edges
ROTATION = math.pi  # radians either way
RADIUS = (0.3, 0.42)  # of the shape's circumscribed circle, as a share of SIZE

COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 30),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "purple": (135, 50, 185),
}
SHAPES = ("circle", "square", "triangle", "star")
CLASSES = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)

# Nouns of the wider world that never appear in a picture: trained as captions that fit no picture (as a real
# CLIP knows that a drawing of a circle is not a dog), and queried as absent subjects.
ABSENT = ("dog", "cat", "car", "tree", "house", "person", "flower", "bird", "boat", "chair", "cup", "book")

# Words outside the tokenizer's vocabulary (every one of them reads as <unk>), trained like ABSENT: the model
# answers "not in this world" for a word it does not know, as a real CLIP answers for a subject not in the photos.
UNKNOWN = ("giraffe", "bicycle", "pizza", "mountain", "guitar", "beach")

FULL = ("a photo of a {c} {s}", "a {c} {s}", "a picture of a {c} {s}", "{c} {s}", "a drawing of a {c} {s}")
COLOUR_ONLY = ("something {c}", "a {c} thing", "{c}", "a photo of something {c}", "a {c} shape")
SHAPE_ONLY = ("a {s}", "a photo of a {s}", "{s}", "a picture of a {s}", "a drawing of a {s}")
ABSENT_TEMPLATES = ("a {n}", "a photo of a {n}", "a picture of a {n}", "{n}", "a drawing of a {n}", "a {n} on a {m}")


@dataclass(frozen=True)
class Picture:
    """What one picture shows and how it is drawn."""

    colour: str
    shape: str
    radius: float  # of the shape's circumscribed circle, in pixels
    x: float
    y: float
    angle: float  # radians
    background: int  # grey level
    seed: int  # of the colour jitter and the noise

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


def random_picture(rng: np.random.Generator, colour: str | None = None, shape: str | None = None) -> Picture:
    """A picture of the given colour and shape (random where not given), placed and sized at random."""
    radius = float(rng.uniform(RADIUS[0], RADIUS[1]) * SIZE)
    margin = radius + 1  # a whole shape in the frame: a square with a corner cut off is no square
    return Picture(
        colour=colour or str(rng.choice(list(COLOURS))),
        shape=shape or str(rng.choice(SHAPES)),
        radius=radius,
        x=float(rng.uniform(margin, SIZE - margin)),
        y=float(rng.uniform(margin, SIZE - margin)),
        angle=float(rng.uniform(-ROTATION, ROTATION)),
        background=int(rng.integers(70, 200)),
        seed=int(rng.integers(2**31)),
    )


def outline(shape: str, radius: float, x: float, y: float, angle: float) -> list[tuple[float, float]]:
    """The polygon of a shape (a circle is a 64-gon), centred on (x, y)."""
    if shape == "circle":
        corners, radii = 64, [radius]
    elif shape == "square":
        corners, radii = 4, [radius]
    elif shape == "triangle":
        corners, radii = 3, [radius]
    elif shape == "star":
        corners, radii = 10, [radius, radius * 0.42]
    else:
        raise ValueError(f"no shape {shape!r} in the toy world")
    return [
        (
            x + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / corners),
            y + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def draw(picture: Picture) -> Image.Image:
    """The picture as a SIZE x SIZE RGB image."""
    rng = np.random.default_rng(picture.seed)
    big = SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (picture.background,) * 3)
    fill = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in COLOURS[picture.colour])
    points = outline(picture.shape, picture.radius, picture.x, picture.y, picture.angle)
    ImageDraw.Draw(canvas).polygon([(px * SUPERSAMPLE, py * SUPERSAMPLE) for px, py in points], fill=fill)
    pixels = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32)
    pixels += rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_pixels(pictures: Iterable[Picture]) -> np.ndarray:
    """uint8 (N, SIZE, SIZE, 3) pixels of the pictures."""
    return np.stack([np.asarray(draw(p)) for p in pictures])


def caption(picture: Picture, rng: np.random.Generator) -> str:
    """One caption of the picture, drawn at random: its colour and shape, its colour only, or its shape only."""
    kind = rng.choice(3, p=[0.5, 0.25, 0.25])
    template = str(rng.choice((FULL, COLOUR_ONLY, SHAPE_ONLY)[kind]))
    return template.format(c=picture.colour, s=picture.shape)


def describes(text: str, picture: Picture) -> bool:
    """Whether a caption made from the templates fits the picture: every colour and shape it names is the picture's."""
    words = set(text.lower().split())
    if words & set(ABSENT):
        return False
    colours, shapes = words & set(COLOURS), words & set(SHAPES)
    return (colours or shapes) and colours <= {picture.colour} and shapes <= {picture.shape}


def vocabulary() -> list[str]:
    """Every word a toy-world caption or query may use."""
    words = set()
    for template in FULL + COLOUR_ONLY + SHAPE_ONLY + ABSENT_TEMPLATES:
        words.update(template.replace("{c}", "").replace("{s}", "").replace("{n}", "").split())
    return sorted(words) + list(COLOURS) + list(SHAPES) + list(ABSENT)


def collection(counts: dict[tuple[str, str], int], seed: int) -> list[Picture]:
    """Pictures of each (colour, shape) class, as many as `counts` says, in a shuffled order."""
    rng = np.random.default_rng(seed)
    pictures = [random_picture(rng, colour, shape) for (colour, shape), n in counts.items() for _ in range(n)]
    order = rng.permutation(len(pictures))
    return [pictures[i] for i in order]


def write_collection(folder: Path, pictures: list[Picture]) -> dict[str, Picture]:
    """Save the pictures as PNGs named by their position only; the truth, by file name, is returned."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, picture in enumerate(pictures):
        name = f"img{i:05d}.png"
        draw(picture).save(folder / name)
        truth[name] = picture
    return truth


def write_copies(folder: Path) -> dict[str, str]:
    """Copies of the first three pictures, as collections get them; copy name -> original name."""
    copies = {
        "copy-same-bytes.png": "img00000.png",
        "copy-resaved.jpg": "img00001.png",
        "copy-enlarged.png": "img00002.png",
    }
    shutil.copy(folder / "img00000.png", folder / "copy-same-bytes.png")
    # 4:4:4: with the usual 4:2:0 chroma subsampling the 48-pixel shapes change colour at their edges, and the
    # toy model sees it (cosine 0.83-0.999 to the original at quality 85); this way 0.9998 (seeds 0-5).
    Image.open(folder / "img00001.png").save(folder / "copy-resaved.jpg", quality=95, subsampling=0)
    enlarged = Image.open(folder / "img00002.png").resize((96, 96), Image.Resampling.BICUBIC)
    enlarged.save(folder / "copy-enlarged.png")  # seen at 48 pixels again: cosine 0.998-0.9999
    return copies

"""Shared fixtures: tiny random-weight models saved like hub checkpoints, and planted photo folders."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.settings import Settings
from tests.model_factory import (
    CORPUS,
    GERMAN,
    save_blip,
    save_clip,
    save_sentence_transformers_clip,
    save_siglip,
    save_siglip2,
    save_student_text_model,
)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """Every test's Settings (subprocesses too) export ONNX models into one temp cache, never ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPDEX_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory) -> Path:
    return save_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")


@pytest.fixture(scope="session")
def siglip2_dir(tmp_path_factory) -> Path:
    """Fixed-resolution SigLIP 2 (a SiglipModel with Gemma's tokenizer)."""
    return save_siglip2(tmp_path_factory.mktemp("models") / "tiny-siglip2")


@pytest.fixture(scope="session")
def naflex_dir(tmp_path_factory) -> Path:
    """SigLIP 2 NaFlex (a Siglip2Model: variable patch grids)."""
    return save_siglip2(tmp_path_factory.mktemp("models") / "tiny-siglip2-naflex", naflex=True)


@pytest.fixture(scope="session")
def blip_dir(tmp_path_factory) -> Path:
    return save_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def st_clip_dir(tmp_path_factory) -> Path:
    return save_sentence_transformers_clip(tmp_path_factory.mktemp("models") / "tiny-st-clip")


@pytest.fixture(scope="session")
def student_dirs(tmp_path_factory, clip_dir) -> tuple[Path, Path]:
    """A text model distilled into tiny-clip's space (English and German), and its untrained twin."""
    from indexer.models import load_model
    from indexer.torch_embed import TorchEmbedder
    from search.text_models import PROBES

    teacher = TorchEmbedder(load_model(str(clip_dir), "cpu"), 16)
    english, translations = list(PROBES) + CORPUS, dict(zip(GERMAN, CORPUS, strict=True))
    root = tmp_path_factory.mktemp("models")
    return (
        save_student_text_model(root / "student", teacher, english, translations),
        save_student_text_model(root / "stranger", teacher, english, translations, trained=False),
    )


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


@pytest.fixture
def settings(tmp_path, clip_dir) -> Settings:
    """Settings for a fresh store in tmp_path using the tiny CLIP, one decode worker."""
    return Settings(store=tmp_path / "store", model=str(clip_dir), device="cpu", workers=1, batch_size=4)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL 16 server with pgvector (the pgserver wheel), on a Unix socket in a temp directory."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(postgres, request) -> str:
    """A fresh, empty database on the test server: postgresql://postgres@/<name>?host=<socket dir>."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE); CREATE DATABASE {name};")
    return postgres.get_uri(name)


@pytest.fixture(params=["embedded", "postgres"])
def store_location(request, tmp_path) -> str:
    """Each backend in turn: a store directory, then a PostgreSQL database."""
    if request.param == "embedded":
        return str(tmp_path / "store")
    return request.getfixturevalue("pg_url")

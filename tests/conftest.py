"""Shared fixtures: tiny random-weight models saved like hub checkpoints, and planted photo folders."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from indexer.indexing import index_folder
from indexer.models.loading import canonical_name
from indexer.settings import Settings
from indexer.store import NO_FILTERS, Caption, Image, Tag, open_store, utcnow
from search.service import Service
from tests.support import toyworld
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.model_factory import (
    CORPUS,
    GERMAN,
    save_blip,
    save_clip,
    save_sentence_transformers_clip,
    save_siglip,
    save_siglip2,
    save_student_text_model,
)
from tests.support.photos import write_photos
from tests.support.planted import CONE, DIM, DOG, LIGHTHOUSE, UNICORN, plant_vectors, unit
from tests.support.processes import free_port


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """Every test's Settings (subprocesses too) export ONNX models into one temp cache, never ~/.cache, and embed
    in ONNX Runtime fp32: the same vectors on every CPU (tests/test_runtimes.py tests the measured choice)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPDEX_CACHE_DIR", str(path))
        mp.setenv("CLIPDEX_RUNTIME", "onnx")
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
    from indexer.models.loading import load_model
    from indexer.models.paired_text import PROBES
    from indexer.models.torch_runtime import TorchEmbedder

    teacher = TorchEmbedder(load_model(str(clip_dir), "cpu"), 16)
    english, translations = list(PROBES) + CORPUS, dict(zip(GERMAN, CORPUS, strict=True))
    root = tmp_path_factory.mktemp("models")
    return (
        save_student_text_model(root / "student", teacher, english, translations),
        save_student_text_model(root / "stranger", teacher, english, translations, trained=False),
    )


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


@pytest.fixture(scope="module")
def planted(tmp_path_factory, clip_dir) -> Settings:
    """Six photos in beach/ and city/, indexed; beach ones dated 2021, city ones 2023; tags and a caption."""
    root = tmp_path_factory.mktemp("photos")
    write_photos(root / "beach", 3, start=0)
    write_photos(root / "city", 3, start=3)
    settings = Settings(
        store=tmp_path_factory.mktemp("api") / "store", model=str(clip_dir), device="cpu", workers=1, batch_size=4
    )
    index_folder(root, settings, show_progress=False)
    store = open_store(settings.store)
    with store.session() as s:
        for image in s.scalars(select(Image)):
            year = 2021 if image.relpath.startswith("beach/") else 2023
            image.taken_at = datetime(year, 6, 1 + image.id, 12, 0)
            s.add(
                Tag(
                    image_id=image.id,
                    label_set="places",
                    label=year == 2021 and "Sea" or "street",
                    score=0.9,
                    model="m",
                )
            )
        first = s.scalar(select(Image.id).where(Image.relpath == "beach/img000.jpg"))
        s.add(Caption(image_id=first, model="blip", prompt="", text="a sunny beach", created_at=utcnow()))
        s.commit()
    return settings


TOY_MODEL = Path(__file__).parent / "data" / "toyworld-clip"


@dataclass
class ToyWorld:
    """A toy-world collection indexed with the model that knows that world, and what each picture shows."""

    service: Service
    truth: dict[int, toyworld.Picture]  # what each stored image shows, by id; a copy shows its original
    ids: dict[str, int]  # stored image ids by file name
    originals: list[str]  # the drawn pictures' file names, in order
    copies: dict[str, str]  # copy name -> original name

    def showing(self, fits: Callable[[toyworld.Picture], bool]) -> set[int]:
        return {i for i, picture in self.truth.items() if fits(picture)}

    def of_class(self, cls: tuple[str, str]) -> set[int]:
        return self.showing(lambda p: (p.colour, p.shape) == cls)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> ToyWorld:
    """20 toy-world pictures of each colour and shape (seed 0) and three copies (tests/support/toyworld.py), indexed
    through the library with the toy-world CLIP; the names say nothing of what the pictures show."""
    folder = tmp_path_factory.mktemp("toyworld")
    by_name = toyworld.write_collection(folder, toyworld.collection(dict.fromkeys(toyworld.CLASSES, 20), seed=0))
    originals = sorted(by_name)
    copies = toyworld.write_copies(folder)
    by_name |= {copy: by_name[original] for copy, original in copies.items()}
    settings = Settings(store=str(tmp_path_factory.mktemp("toystore") / "store"), model=str(TOY_MODEL), device="cpu")
    index_folder(folder, settings, show_progress=False)
    service = Service(settings)
    paths = service.store.paths(service.store.matching_ids(NO_FILTERS).tolist())
    ids = {Path(path).name: i for i, path in paths.items()}
    assert ids.keys() == by_name.keys()
    return ToyWorld(service, {i: by_name[name] for name, i in ids.items()}, ids, originals, copies)


@pytest.fixture
def lighthouses(tmp_path, clip_dir, monkeypatch):
    """2000 images in a cone around CONE and five lighthouses; texts sit in a cone of their own (the gap)."""
    rng = np.random.default_rng(2)  # its background's best z per query: 2.95, 3.26, 2.95 (the cut: 3.48)
    background = unit(0.8 * CONE + 0.6 * unit(rng.standard_normal((2000, DIM)) * (np.arange(DIM) != 63)))
    lighthouses = unit(0.8 * CONE + 0.55 * LIGHTHOUSE + 0.05 * rng.standard_normal((5, DIM)))
    faint = unit(0.8 * CONE + 0.6 * unit(LIGHTHOUSE + 2.5 * rng.standard_normal(DIM) * (np.arange(DIM) > 5)))
    location = str(tmp_path / "store")
    plant_vectors(location, np.concatenate([lighthouses, faint[None], background]), model=canonical_name(str(clip_dir)))
    texts = {"lighthouse": unit(0.5 * CONE + 0.85 * LIGHTHOUSE), "unicorn": unit(0.5 * CONE + 0.85 * UNICORN)}
    texts["a dog"] = unit(0.2 * CONE + 0.95 * DOG)  # another baseline altogether
    monkeypatch.setattr(Service, "_embed_text", lambda self, text: texts[text])
    return location


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Ray binds to the machine's address unless told it is not part of a cluster; token auth stays off for the test.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A Ray head node on 127.0.0.1 with 2 CPUs, one for each module that asks; the tests' drivers connect to it."""
    port = free_port()
    temp_dir = tmp_path_factory.mktemp("ray")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)
        import ray  # after the environment is set: Ray reads it on import

        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address",
             "127.0.0.1", "--port", str(port), "--ray-client-server-port", str(free_port()), "--num-cpus", "2",
             "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and head.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        assert head.poll() is None, head.stderr.read().decode()
        yield address
        ray.shutdown()  # the in-process driver of the tests that ran one
        os.killpg(head.pid, signal.SIGKILL)  # the head and every process it started (they share its group)
        head.wait(30)

"""A multilingual text model paired with a store's image model: measured, recorded, refused when foreign.

The store holds tiny-clip's own text vectors of the eight CORPUS sentences as its "images", so the right image
for each German translation is known; the student (tests/model_factory.save_student_text_model) was distilled
into tiny-clip's text space on English and German, as clip-ViT-B-32-multilingual-v1 was into clip-ViT-B-32's.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import indexer.models.paired_text
from indexer.errors import ModelMismatchError
from indexer.models.loading import canonical_name, load_model
from indexer.models.paired_text import paired_names
from indexer.models.torch_runtime import TorchEmbedder
from indexer.settings import Settings
from search.api import create_app
from search.cli import app
from search.service import Service
from tests.support.model_factory import CORPUS, GERMAN, save_student_text_model
from tests.support.planted import plant_vectors, unit


@pytest.fixture
def store_dir(tmp_path, clip_dir):
    """Images 1-8: tiny-clip's text vectors of CORPUS; 9-208: random vectors."""
    own = TorchEmbedder(load_model(str(clip_dir), "cpu"), 16).embed_texts(CORPUS)
    background = unit(np.random.default_rng(5).standard_normal((200, own.shape[1])))
    location = str(tmp_path / "store")
    plant_vectors(location, np.concatenate([own, background]), model=canonical_name(str(clip_dir)))
    return location


def top_ids(engine: Service, queries: list[str]) -> list[int]:
    return [engine.search(q, "embedding", k=1)[0].id for q in queries]


def test_german_queries_find_the_images_of_the_english_space(store_dir, student_dirs):
    student, _ = student_dirs
    engine = Service(Settings(store=store_dir, text_model=str(student)))
    assert top_ids(engine, GERMAN) == list(range(1, 9))
    assert top_ids(engine, CORPUS) == list(range(1, 9))  # English too
    [(name, agreement)] = paired_names(engine.store)
    assert name == str(student) and agreement > 0.9
    assert engine.stats()["text_models"] == [str(student)]


def test_a_recorded_pairing_is_not_measured_again(store_dir, student_dirs, monkeypatch):
    student, _ = student_dirs
    assert top_ids(Service(Settings(store=store_dir, text_model=str(student))), GERMAN[:1]) == [1]
    monkeypatch.setattr(indexer.models.paired_text, "agreement", lambda *a: pytest.fail("measured again"))
    engine = Service(Settings(store=store_dir, text_model=str(student)))
    assert top_ids(engine, GERMAN[:2]) == [1, 2] and engine._embedder is None  # the image model never loaded


def test_a_text_model_of_another_space_is_refused(store_dir, student_dirs, tmp_path):
    _, stranger = student_dirs
    engine = Service(Settings(store=store_dir, text_model=str(stranger)))
    with pytest.raises(ModelMismatchError, match=r"does not share the vector space .* mean cosine of -?0\.\d\d"):
        engine.search(GERMAN[0], "embedding")
    assert paired_names(engine.store) == []
    narrow_teacher = SimpleNamespace(embed_texts=lambda texts: np.ones((len(texts), 8), dtype=np.float32))
    narrow = save_student_text_model(tmp_path / "narrow", narrow_teacher, CORPUS, {}, trained=False)
    with pytest.raises(ModelMismatchError, match="gives 8-dimensional vectors .* holds 16-dimensional ones"):
        Service(Settings(store=store_dir, text_model=str(narrow))).search("a cat", "embedding")


def test_cli_and_api_take_the_text_model(store_dir, student_dirs):
    student, stranger = student_dirs
    runner = CliRunner()
    result = runner.invoke(app, ["search", GERMAN[2], "--text-model", str(student), "--store", store_dir, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["id"] == 3
    result = runner.invoke(app, ["stats", "--store", store_dir])
    assert f"text     {student} (shares the model's space)" in result.output
    result = runner.invoke(app, ["search", "eine Katze", "--text-model", str(stranger), "--store", store_dir])
    assert result.exit_code == 2 and "does not share the vector space" in result.output
    with TestClient(create_app(Settings(store=store_dir, text_model=str(student)))) as client:
        hits = client.get("/api/search", params={"q": GERMAN[5], "k": 1}).json()["hits"]
        assert hits[0]["id"] == 6
        assert client.get("/api/stats").json()["text_models"] == [str(student)]

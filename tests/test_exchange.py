"""`clipdex store import` / `export`: clip-retrieval's layout (img_emb/*.npy, metadata/*.parquet) both ways."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from indexer.errors import BadInputError, ModelMismatchError
from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import Caption, Image, open_store, utcnow
from indexer.store.exchange import BAD_VECTOR, CAPTION_MODEL, NO_PATH
from search import service as clipdex
from search.cli import stores
from search.service import Service
from tests.support.photos import write_photos
from tests.support.planted import DIM


def other_store(settings: Settings, name: str) -> Settings:
    return settings.model_copy(update={"store": str(Path(settings.store).parent / name)})


def write_shard(folder: Path, number: int, vectors: np.ndarray, metadata: dict[str, list]) -> None:
    """One shard as `clip-retrieval inference` writes it: np.save of the batch, a pandas DataFrame to parquet."""
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{number}.npy", vectors)
    pd.DataFrame(metadata).to_parquet(folder / "metadata" / f"metadata_{number}.parquet")


def random_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def by_path(settings: Settings) -> dict[str, np.ndarray]:
    store = open_store(settings.store)
    ids, vectors = zip(*store.iter_vectors(), strict=True)
    ids, vectors = np.concatenate(ids), np.concatenate(vectors)
    paths = store.paths(ids.tolist())
    return {paths[i]: v for i, v in zip(ids.tolist(), vectors, strict=True)}


def image_count(settings: Settings) -> int:
    with open_store(settings.store).session() as s:
        return s.scalar(select(func.count()).select_from(Image))


def test_export_then_import_gives_the_same_store(tmp_path, settings):
    photos = tmp_path / "photos"
    write_photos(photos / "a", 3)
    write_photos(photos / "b", 2, start=3)
    index_folder(photos, settings, show_progress=False)
    store = open_store(settings.store)
    first = store.find_path(photos / "a" / "img000.jpg")
    with store.session() as s:
        s.add(Caption(image_id=first, model="blip", prompt="", text="a sunny beach", created_at=utcnow()))
        s.commit()

    out = tmp_path / "out"
    exported = clipdex.export_embeddings(out, settings, shard_size=3, show_progress=False)
    assert (exported.exported, exported.shards) == (5, 2)
    assert json.loads((out / "clipdex.json").read_text())["model"] == store.model
    shard = np.load(out / "img_emb" / "img_emb_0.npy")
    assert (shard.dtype, shard.shape) == (np.float16, (3, store.dim))
    metadata = pq.read_table(out / "metadata").to_pylist()
    row = next(row for row in metadata if row["clipdex_id"] == first)
    assert row["image_path"] == str(photos / "a" / "img000.jpg")
    assert (row["caption"], row["width"], row["height"]) == ("a sunny beach", 320, 240)
    assert not list(out.rglob("*.part"))

    copy = other_store(settings, "copy")
    summary = clipdex.import_embeddings(out, None, copy, None, False)  # the model: from clipdex.json
    assert (summary.imported, summary.captions, summary.skipped) == (5, 1, {})
    before, after = by_path(settings), by_path(copy)
    assert before.keys() == after.keys()
    for path, vector in before.items():
        np.testing.assert_allclose(after[path], vector, atol=2e-3)
    original, imported = Service(settings), Service(copy)
    for path in before:
        assert [h.path for h in imported.similar(path, k=4)] == [h.path for h in original.similar(path, k=4)]
    assert imported.store.hit_rows([imported.store.find_path(photos / "a" / "img000.jpg")]).popitem()[1][1] == (
        "a sunny beach"
    )

    # The files kept their size and time: indexing the folder into the imported store embeds nothing.
    again = index_folder(photos, copy, show_progress=False)
    assert (again.indexed, again.reused, again.unchanged, again.removed) == (0, 0, 5, 0)

    with pytest.raises(BadInputError, match="already holds embeddings"):
        clipdex.export_embeddings(out, settings, shard_size=3, show_progress=False)


def test_import_of_a_clip_retrieval_folder(tmp_path, settings, clip_dir):
    photos = write_photos(tmp_path / "photos", 3)
    dim = DIM  # the tiny model's: the index run below embeds its probe phrases into the store
    vectors = 3 * random_vectors(7, dim)  # not unit length: normalised on the way in
    vectors[5] = 0
    write_shard(
        tmp_path / "embeddings",
        0,
        vectors.astype(np.float16),
        {
            "image_path": [str(p) for p in photos] + [str(tmp_path / "photos" / "gone.jpg"), None, None, None],
            "url": [None] * 4 + ["https://example.com/cats/1.jpg?size=l", "https://example.com/zero.jpg", None],
            "caption": ["a red kite", None, None, None, "a cat", None, "orphan"],
            "width": [320, 320, 320, None, 640, 10, None],
        },
    )
    summary = clipdex.import_embeddings(tmp_path / "embeddings", str(clip_dir), settings, None, False)
    assert (summary.imported, summary.captions) == (5, 2)
    assert summary.skipped == {BAD_VECTOR: 1, NO_PATH: 1}
    assert "imported 5 images" in summary.line()

    store = open_store(settings.store)
    assert store.dim == dim and sorted(store.roots()) == sorted([str(tmp_path / "photos"), "https://example.com"])
    stored = by_path(settings)
    assert np.allclose(np.linalg.norm(np.stack(list(stored.values())), axis=1), 1, atol=2e-3)
    with store.session() as s:
        assert set(s.scalars(select(Caption.text).where(Caption.model == CAPTION_MODEL))) == {"a red kite", "a cat"}
        web = s.scalar(select(Image).where(Image.relpath == "cats/1.jpg?size=l"))
        assert (web.size, web.width) == (0, 640)
    assert [hit.caption for hit in Service(settings).search("kite", mode="caption", k=5)] == ["a red kite"]

    # The files that exist are unchanged to an index run; the one that never was there is dropped.
    again = index_folder(tmp_path / "photos", settings, show_progress=False)
    assert (again.indexed, again.reused, again.unchanged, again.removed) == (0, 0, 3, 1)


def test_a_width_or_model_that_differs_is_refused_before_writing(tmp_path, settings, clip_dir):
    write_photos(tmp_path / "photos", 2)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    dim = open_store(settings.store).dim
    write_shard(tmp_path / "wide", 0, random_vectors(2, dim + 8), {"url": ["http://a.org/1.jpg", "http://a.org/2.jpg"]})
    with pytest.raises(BadInputError, match=f"{dim + 8} wide.* {dim}-wide"):
        clipdex.import_embeddings(tmp_path / "wide", str(clip_dir), settings, None, False)
    write_shard(tmp_path / "right", 0, random_vectors(2, dim), {"url": ["http://a.org/1.jpg", "http://a.org/2.jpg"]})
    with pytest.raises(ModelMismatchError, match="not other/model"):
        clipdex.import_embeddings(tmp_path / "right", "other/model", settings, None, False)
    assert image_count(settings) == 2
    with pytest.raises(BadInputError, match="--model"):
        clipdex.import_embeddings(tmp_path / "right", None, settings, None, False)


def test_a_rerun_adds_only_the_new_rows(tmp_path, settings, clip_dir):
    source, dim = tmp_path / "web", 32  # no index run here: any width will do
    urls = [f"https://example.com/{i}.jpg" for i in range(6)]
    write_shard(source, 0, random_vectors(4, dim), {"url": urls[:4], "key": [str(i) for i in range(4)]})
    app = typer.Typer()
    app.command("import")(stores.store_import)
    app.command("export")(stores.store_export)
    runner = CliRunner()
    command = ["import", str(source), "--model", str(clip_dir), "--store", str(settings.store), "--json"]
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["imported"] == 4

    # As if the import had been killed after its first shard, or the collection grew: a repeated row is no twin.
    write_shard(source, 1, random_vectors(3, dim, seed=1), {"url": [urls[3], *urls[4:]], "key": ["3", "4", "5"]})
    second = json.loads(runner.invoke(app, command).stdout)
    assert (second["imported"], second["present"]) == (2, 5)
    assert image_count(settings) == 6

    out = runner.invoke(app, ["export", str(tmp_path / "out"), "--store", str(settings.store), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["exported"] == 6
    exported = pq.read_table(tmp_path / "out" / "metadata" / "metadata_0.parquet").to_pylist()
    assert [row["url"] for row in exported] == urls and {row["image_path"] for row in exported} == {None}

    broken = tmp_path / "broken"
    write_shard(broken, 0, random_vectors(2, dim), {"url": urls[:3]})
    result = runner.invoke(app, ["import", str(broken), "--model", str(clip_dir), "--store", str(settings.store)])
    assert result.exit_code == 2 and "3 rows" in result.output

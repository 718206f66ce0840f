"""Captions: tiny random BLIP / BLIP-2 loaded like hub checkpoints, stored, resumed, searched by FTS and hybrid."""

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from indexer.enrich.captioner import CPU_CAPTIONER
from indexer.enrich.captions import Captioner, caption_store, load_captioner
from indexer.errors import BadInputError, ModelLoadError
from indexer.indexing import index_folder
from indexer.store import Caption, CaptionFailure, Image, Tag, open_store, utcnow
from search.api import create_app
from search.cli import app
from search.service import RRF_K, Service
from tests.support.model_factory import save_blip2
from tests.support.photos import photo, write_photos


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory) -> Path:
    return save_blip2(tmp_path_factory.mktemp("models") / "tiny-blip2", min_new_tokens=3)


@pytest.fixture
def cap_settings(settings, blip_dir):
    """The tiny CLIP for embeddings, the tiny BLIP for captions, short greedy generation."""
    return settings.model_copy(
        update=dict(caption_model=str(blip_dir), caption_max_new_tokens=5, caption_beams=1, caption_batch_size=2)
    )


def stored_captions(store_path: Path) -> list[Caption]:
    store = open_store(store_path)
    with store.session() as s:
        return list(s.scalars(select(Caption).order_by(Caption.image_id, Caption.model)))


def image_ids(store_path: Path) -> dict[str, int]:
    """Stored image ids by file name."""
    store = open_store(store_path)
    with store.session() as s:
        return {Path(rel).name: i for i, rel in s.execute(select(Image.id, Image.relpath)).all()}


def failures(store_path: Path) -> dict[int, str]:
    store = open_store(store_path)
    with store.session() as s:
        return dict(s.execute(select(CaptionFailure.image_id, CaptionFailure.reason)).all())


@pytest.mark.parametrize(("family", "fixture"), [("blip", "blip_dir"), ("blip-2", "blip2_dir")])
def test_load_and_caption_from_directory(family, fixture, request):
    directory = request.getfixturevalue(fixture)
    captioner = load_captioner(str(directory), "cpu")
    assert (captioner.family, captioner.name) == (family, str(directory.resolve()))
    pixels = [np.asarray(photo(seed).resize(captioner.prep.out_size[::-1])) for seed in range(3)]
    texts = captioner.caption(pixels, "a photography of", max_new_tokens=4, beams=2)
    assert len(texts) == 3
    assert all(isinstance(t, str) and t for t in texts)  # min_new_tokens in the saved config: never empty


def test_loading_a_non_captioner_is_a_clear_error(clip_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="BLIP or BLIP-2"):
        load_captioner(str(clip_dir), "cpu")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_captioner(str(tmp_path), "cpu")


def test_index_with_a_bad_captioner_fails_before_indexing(tmp_path, cap_settings, clip_dir):
    write_photos(tmp_path / "photos", 2)
    with pytest.raises(ModelLoadError, match="BLIP or BLIP-2"):
        index_folder(
            tmp_path / "photos", cap_settings.model_copy(update={"caption_model": str(clip_dir)}), caption=True
        )
    assert not Path(cap_settings.store).exists()


def test_default_captioner_on_cpu_is_blip_base(settings, monkeypatch):
    seen = []

    def fake_family(name):
        seen.append(name)
        raise ModelLoadError("stop here")

    monkeypatch.setattr("indexer.enrich.captioner.caption_family", fake_family)
    with pytest.raises(ModelLoadError):
        caption_store(open_store(settings.store, "m", 4, create=True), settings)
    assert seen == [CPU_CAPTIONER]


def test_index_with_captions_is_incremental(tmp_path, cap_settings, blip_dir):
    folder = tmp_path / "photos"
    write_photos(folder, 5)
    summary = index_folder(folder, cap_settings, show_progress=False, caption=True)
    assert (summary.indexed, summary.captions.captioned, summary.captions.failed) == (5, 5, 0)
    assert "captioned 5, failed 0, already done 0" in summary.line()
    first = stored_captions(cap_settings.store)
    assert [(c.model, c.prompt) for c in first] == [(str(blip_dir.resolve()), "a photography of")] * 5
    assert all(c.text for c in first)

    again = index_folder(folder, cap_settings, show_progress=False, caption=True)
    assert (again.indexed, again.captions.captioned, again.captions.done_before) == (0, 0, 5)
    assert [(c.id, c.created_at) for c in stored_captions(cap_settings.store)] == [(c.id, c.created_at) for c in first]

    # One file changes, one is new, one is deleted: only the changed and the new one are captioned.
    photo(100).save(folder / "img001.jpg", quality=90)
    write_photos(folder, 1, start=10)
    (folder / "img004.jpg").unlink()
    before = image_ids(cap_settings.store)
    third = index_folder(folder, cap_settings, show_progress=False, caption=True)
    assert (third.indexed, third.removed, third.captions.captioned, third.captions.done_before) == (2, 1, 2, 3)
    now = image_ids(cap_settings.store)
    after = {c.image_id: c for c in stored_captions(cap_settings.store)}
    old = {c.image_id: c for c in first}
    assert sorted(after) == sorted(now.values())
    assert after[now["img001.jpg"]].created_at > old[now["img001.jpg"]].created_at  # changed: captioned anew
    assert before["img004.jpg"] not in after  # deleted: its caption went with it
    assert after[now["img000.jpg"]].created_at == old[now["img000.jpg"]].created_at


def test_index_without_caption_flag_loads_no_captioner(tmp_path, cap_settings, monkeypatch):
    monkeypatch.setattr("indexer.enrich.captions.load_captioner", lambda *a: pytest.fail("captioner loaded"))
    write_photos(tmp_path / "photos", 2)
    summary = index_folder(tmp_path / "photos", cap_settings, show_progress=False)
    assert summary.captions is None
    assert stored_captions(cap_settings.store) == []


def test_second_model_keeps_both_and_redo_replaces(tmp_path, cap_settings, blip_dir, blip2_dir):
    write_photos(tmp_path / "photos", 3)
    index_folder(tmp_path / "photos", cap_settings, show_progress=False, caption=True)
    store = open_store(cap_settings.store)
    blip2 = cap_settings.model_copy(update=dict(caption_model=str(blip2_dir), caption_prompt="what is here?"))
    summary = caption_store(store, blip2, show_progress=False)
    assert (summary.captioned, summary.prompt) == (3, "Question: what is here? Answer:")
    models = [(c.image_id, Path(c.model).name, c.prompt) for c in stored_captions(cap_settings.store)]
    assert models == [
        (i, name, prompt)
        for i in (1, 2, 3)
        for name, prompt in (("tiny-blip", "a photography of"), ("tiny-blip2", "Question: what is here? Answer:"))
    ]
    assert caption_store(store, blip2, show_progress=False).captioned == 0
    blip_ids = [c.id for c in stored_captions(cap_settings.store) if c.model == str(blip_dir.resolve())]
    redone = caption_store(store, blip2, redo=True, show_progress=False)
    assert (redone.captioned, redone.done_before) == (3, 0)
    after = stored_captions(cap_settings.store)
    assert len(after) == 6
    assert [c.id for c in after if c.model == str(blip_dir.resolve())] == blip_ids


def test_failures_are_recorded_and_skipped(tmp_path, cap_settings, monkeypatch):
    folder = tmp_path / "photos"
    write_photos(folder, 5)
    index_folder(folder, cap_settings, show_progress=False)
    (folder / "img001.jpg").write_bytes(b"not a jpeg any more")  # decoding fails at caption time
    original = Captioner.caption

    def caption_or_fail(self, pixels, *args):
        if any(p.mean() < 1 for p in pixels):
            raise RuntimeError("boom")
        return original(self, pixels, *args)

    PILImage.new("RGB", (320, 240)).save(folder / "img003.jpg")  # generation fails on this black image
    monkeypatch.setattr(Captioner, "caption", caption_or_fail)
    store = open_store(cap_settings.store)
    summary = caption_store(store, cap_settings, show_progress=False)
    assert (summary.captioned, summary.failed) == (3, 2)
    reasons, named = failures(cap_settings.store), image_ids(cap_settings.store)
    assert sorted(reasons) == sorted([named["img001.jpg"], named["img003.jpg"]])
    assert reasons[named["img001.jpg"]].startswith("not an image")
    assert reasons[named["img003.jpg"]] == "generation failed: RuntimeError: boom"
    captioned = sorted(named[n] for n in ("img000.jpg", "img002.jpg", "img004.jpg"))
    assert sorted(c.image_id for c in stored_captions(cap_settings.store)) == captioned

    again = caption_store(store, cap_settings, show_progress=False)
    assert (again.captioned, again.failed, again.done_before) == (0, 0, 5)
    photo(4).save(folder / "img001.jpg", quality=90)
    retried = caption_store(store, cap_settings, redo=True, show_progress=False)
    assert (retried.captioned, retried.failed) == (4, 1)
    assert sorted(failures(cap_settings.store)) == [named["img003.jpg"]]


def test_killed_run_resumes(tmp_path, cap_settings, monkeypatch):
    write_photos(tmp_path / "photos", 5)
    index_folder(tmp_path / "photos", cap_settings, show_progress=False)
    store = open_store(cap_settings.store)
    original, calls = Captioner.caption, []

    def killed_on_second_batch(self, pixels, *args):
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, pixels, *args)

    monkeypatch.setattr(Captioner, "caption", killed_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        caption_store(store, cap_settings, show_progress=False)
    assert [c.image_id for c in stored_captions(cap_settings.store)] == [1, 2]  # the first batch was committed
    resumed = caption_store(store, cap_settings, show_progress=False)
    assert (resumed.captioned, resumed.done_before) == (3, 2)
    assert [c.image_id for c in stored_captions(cap_settings.store)] == [1, 2, 3, 4, 5]


# --- search ---------------------------------------------------------------------------------------------------

QUERY = "bicycle"
# Planted captions by image id: image 5 matches best (the word twice in two words), then 3, then 4 (longer).
PLANTED = {
    1: "a cat sleeping on a sofa",
    2: "a dog on a beach",
    3: "a bicycle",
    4: "a bicycle leaning on a long brick wall with windows and doors",
    5: "bicycle bicycle",
}
# Planted cosine similarities to the query's embedding: embedding ranks 1, 2, 3, 4, 5.
COSINES = {1: 0.9, 2: 0.7, 3: 0.5, 4: 0.3, 5: 0.1}


@pytest.fixture
def planted(tmp_path, settings) -> Service:
    """Five indexed images whose vectors and captions are replaced by planted ones."""
    write_photos(tmp_path / "photos", 5)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    engine = Service(settings)
    query = engine.embedder.embed_texts([QUERY])[0]
    rng = np.random.default_rng(0)
    store = engine.store
    with store.session() as s:
        rows, vectors = [], {}
        for image_id, cosine in COSINES.items():
            other = rng.normal(size=query.shape).astype(np.float32)
            other -= other @ query * query
            other /= np.linalg.norm(other)
            vectors[len(rows)] = (cosine * query + np.sqrt(1 - cosine**2) * other).astype(np.float32)
            rows.append(s.get(Image, image_id))
            s.add(Caption(image_id=image_id, model="planted", prompt="", text=PLANTED[image_id], created_at=utcnow()))
        store.commit_images(s, rows, vectors)
    return engine


def ids(hits) -> list[int]:
    return [hit.id for hit in hits]


def test_embedding_and_caption_modes(planted):
    embedding = planted.search(QUERY, "embedding", k=5)
    assert ids(embedding) == [1, 2, 3, 4, 5]
    assert [round(h.score, 3) for h in embedding] == [0.9, 0.7, 0.5, 0.3, 0.1]
    assert [h.caption for h in embedding] == [PLANTED[i] for i in (1, 2, 3, 4, 5)]  # shown with every hit
    caption = planted.search("Bicycles!", "caption", k=5)  # stemmed, case- and punctuation-blind
    assert ids(caption) == [5, 3, 4]
    assert caption[0].score > caption[1].score > caption[2].score > 0
    assert ids(planted.search(QUERY, "caption", k=1, offset=1)) == [3]
    assert planted.search("submarine", "caption") == []
    assert planted.search('" OR NOT (', "caption") == []  # FTS5 syntax in user text is not interpreted


def test_hybrid_is_reciprocal_rank_fusion(planted):
    hits = planted.search(QUERY, "hybrid", k=5)
    # 3: 1/63 + 1/62 > 5: 1/65 + 1/61 > 4: 1/64 + 1/63 > 1: 1/61 > 2: 1/62
    assert ids(hits) == [3, 5, 4, 1, 2]
    assert hits[0].score == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 2))
    assert hits[3].score == pytest.approx(1 / (RRF_K + 1))
    assert ids(planted.search(QUERY, "hybrid", k=2, offset=1)) == [5, 4]
    # A query no caption matches ranks like embedding search.
    assert ids(planted.search("submarine", "hybrid", k=5)) == ids(planted.search("submarine", "embedding", k=5))


def test_hybrid_ties_go_to_the_better_embedding_rank(planted):
    store = planted.store
    # Caption ranks become 5, 3, 2, 4, 1 (longer captions rank lower): images 1 and 5 both hold ranks {1, 5},
    # images 2 and 3 both hold ranks {2, 3}.
    replanted = {1: PLANTED[4] + " and a very long caption that goes on and on and on", 2: "a bicycle on a beach"}
    with store.session() as s:
        for caption in s.scalars(select(Caption).where(Caption.image_id.in_(replanted))):
            caption.text = replanted[caption.image_id]
        # A newer caption that does not match: hits show the caption that matched.
        s.add(Caption(image_id=3, model="other", prompt="", text="a tandem", created_at=utcnow()))
        s.commit()
    assert ids(planted.search(QUERY, "caption", k=5)) == [5, 3, 2, 4, 1]
    hits = planted.search(QUERY, "hybrid", k=5)
    # 2 and 3: 1/62 + 1/63 > 1 and 5: 1/61 + 1/65 > 4: 2/64; within a tie the better embedding rank first.
    assert ids(hits) == [2, 3, 1, 5, 4]
    assert (hits[0].score, hits[2].score) == (hits[1].score, hits[3].score)
    assert hits[1].caption == "a bicycle"
    assert planted.search(QUERY, "embedding", k=5)[2].caption == "a tandem"  # otherwise the newest


def test_hybrid_without_captions_is_embedding_search(tmp_path, settings):
    write_photos(tmp_path / "photos", 3)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    engine = Service(settings)
    assert [(h.id, h.score) for h in engine.search("a dog", "hybrid", k=3)] == [
        (h.id, h.score) for h in engine.search("a dog", "embedding", k=3)
    ]
    with pytest.raises(BadInputError, match="mode"):
        engine.search("a dog", "fuzzy")
    with pytest.raises(BadInputError, match="empty"):
        engine.search("  ", "caption")


def test_api_and_row_filters_take_the_mode(planted, settings):
    with planted.store.session() as s:
        s.add_all(Tag(image_id=i, label_set="colours", label="red", score=0.9, model="m") for i in (3, 4))
        s.commit()
    with TestClient(create_app(settings)) as client:

        def search(**params) -> list[dict]:
            response = client.get("/api/search", params={"q": QUERY, "k": 5, **params})
            assert response.status_code == 200, response.text
            return response.json()["hits"]

        assert [h["id"] for h in search(mode="embedding")] == [1, 2, 3, 4, 5]
        hybrid = search()  # the default, as in the CLI and the page
        assert [h["id"] for h in hybrid] == [3, 5, 4, 1, 2]
        assert hybrid[0]["caption"] == "a bicycle"
        assert [h["id"] for h in search(mode="caption")] == [5, 3, 4]
        assert [h["id"] for h in search(mode="caption", tag="red")] == [3, 4]
        assert [h["id"] for h in search(mode="hybrid", tag="red")] == [3, 4]
        for bad in ({"mode": "fuzzy"}, {"mode": "caption", "min_score": 0.5}):
            response = client.get("/api/search", params={"q": QUERY, **bad})
            assert response.status_code == 422, response.text


def test_fts_follows_updates_deletes_and_migration(planted, settings):
    store = planted.store
    with store.session() as s:
        s.scalars(select(Caption).where(Caption.image_id == 3)).one().text = "a tandem"
        s.commit()
    assert ids(planted.search(QUERY, "caption", k=5)) == [5, 4]
    assert ids(planted.search("tandem", "caption")) == [3]
    store.delete_images([5])
    assert ids(planted.search(QUERY, "caption", k=5)) == [4]
    # A store made before the full-text index existed gets it, filled, when opened.
    with store.engine.begin() as conn:
        for name in ("captions_fts_insert", "captions_fts_delete", "captions_fts_update"):
            conn.exec_driver_sql(f"DROP TRIGGER {name}")
        conn.exec_driver_sql("DROP TABLE captions_fts")
    reopened = Service(settings)
    assert ids(reopened.search(QUERY, "caption", k=5)) == [4]
    assert ids(reopened.search("tandem", "caption")) == [3]


def test_cli_caption_and_search_modes(tmp_path, cap_settings, blip_dir, clip_dir, monkeypatch):
    monkeypatch.setenv("CLIPDEX_CAPTION_MAX_NEW_TOKENS", "4")
    write_photos(tmp_path / "photos", 3)
    runner = CliRunner()
    store = str(cap_settings.store)
    index_args = ["index", str(tmp_path / "photos"), "--store", store, "--model", str(clip_dir), "--workers", "1"]
    result = runner.invoke(app, [*index_args, "--caption", "--caption-model", str(blip_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    captions = summary["captions"]
    assert (summary["indexed"], captions["captioned"], captions["prompt"]) == (3, 3, "a photography of")
    args = ["caption", "--store", store, "--model", str(blip_dir), "--prompt", "a picture of", "--beams", "2", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["captioned"], summary["failed"], summary["prompt"]) == (3, 0, "a picture of")
    assert json.loads(runner.invoke(app, args).stdout)["captioned"] == 0
    assert len(stored_captions(cap_settings.store)) == 6

    text = stored_captions(cap_settings.store)[0].text
    result = runner.invoke(app, ["search", text, "--mode", "caption", "--store", store, "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits and all(set(text.split()) & set(h["caption"].split()) for h in hits)
    assert runner.invoke(app, ["search", "x", "--mode", "fuzzy", "--store", store]).exit_code == 2

    result = runner.invoke(app, ["caption", "--store", store, "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot load captioning model" in result.stderr

"""The store contract: every backend (the embedded store, PostgreSQL) gives the same answers to the same calls.

Planted unit vectors (rounded to float16, the embedded store's precision, so both backends hold the same
numbers) go in through commit_images as the indexer writes them; searches are checked against exact
rankings computed here, with every filter, paging, deletion, changed rows and caption text search.
"""

from datetime import date, datetime, timedelta
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
from sqlalchemy import select

from indexer.errors import ModelMismatchError, StoreNotFoundError
from indexer.store import (
    INDEXED,
    METADATA_TEXT,
    READ_TEXT,
    SKIPPED,
    Caption,
    Filters,
    Image,
    Keyword,
    get_root,
    open_store,
    utcnow,
)
from indexer.store import postgres as pg_backend
from tests.support.planted import unit

DIM, COUNT = 32, 400
ROOTS = ("/photos/wedding", "/photos/shop")
FIRST_DAY = datetime(2020, 1, 1)


def planted_vectors(count: int = COUNT, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit(rng.normal(size=(count, DIM))).astype(np.float16).astype(np.float32)  # both backends hold these


def fill(store, vectors: np.ndarray) -> list[int]:
    """Images 0..N-1 (alternately in the two roots, one a day from 2020-01-01) through commit_images; their ids."""
    with store.session() as s:
        roots = [get_root(s, Path(r)).id for r in ROOTS]
        rows = [
            Image(
                root_id=roots[i % 2], relpath=f"{i // 100}/img{i:04d}.jpg", size=1000 + i, hash=f"{i:032x}",
                mtime_ns=1_700_000_000 * 10**9, status=INDEXED, indexed_at=utcnow(),
                taken_at=FIRST_DAY + timedelta(days=i),
            )
            for i in range(len(vectors))
        ]  # fmt: skip
        for row in rows:
            s.add(row)
        store.commit_images(s, rows, dict(enumerate(vectors)))
        return [row.id for row in rows]


@pytest.fixture
def filled(store_location):
    store = open_store(store_location, model="m", dim=DIM, create=True)
    vectors = planted_vectors()
    ids = fill(store, vectors)
    return store, np.asarray(ids), vectors


def exact(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, admitted=None) -> list[int]:
    keep = np.ones(len(ids), bool) if admitted is None else np.isin(ids, list(admitted))
    scores = vectors[keep] @ query
    return ids[keep][np.argsort(-scores, kind="stable")].tolist()


def test_search_ranks_exactly_and_pages(filled):
    store, ids, vectors = filled
    query = unit(vectors[7] + 0.3 * vectors[30])
    ranking = exact(vectors, ids, query)
    hits = store.search(query, 10)
    assert [i for i, _ in hits] == ranking[:10]
    scores = sorted((vectors @ query).tolist(), reverse=True)
    assert [s for _, s in hits] == pytest.approx(scores[:10], abs=2e-3)
    assert [i for i, _ in store.search(query, 10, offset=10)] == ranking[10:20]
    assert [i for i, _ in store.search(vectors[7], 5, exclude=(int(ids[7]),))] == exact(vectors, ids, vectors[7])[1:6]
    cut = store.search(query, 50, filters=Filters(min_score=(scores[3] + scores[4]) / 2))
    assert [i for i, _ in cut] == ranking[:4]


@pytest.mark.parametrize(
    "filters, admitted",
    [
        (Filters(folder="/photos/shop"), lambda i: i % 2 == 1),
        (Filters(folder="1/"), lambda i: 100 <= i < 200),  # relative to its root
        (Filters(taken_from=date(2020, 2, 1), taken_to=date(2020, 2, 29)), lambda i: 31 <= i <= 59),
        (Filters(folder="/photos/wedding/3", taken_from=date(2020, 11, 1)), lambda i: i % 2 == 0 and 305 <= i < 400),
    ],
    ids=["folder", "relative-folder", "dates", "folder-and-dates"],
)
def test_filters_are_part_of_the_search(filled, filters, admitted):
    store, ids, vectors = filled
    query = unit(vectors[250] + vectors[3])
    allowed = {int(image_id) for n, image_id in enumerate(ids) if admitted(n)}
    assert set(store.matching_ids(filters).tolist()) == allowed
    assert [i for i, _ in store.search(query, 10, filters=filters)] == exact(vectors, ids, query, allowed)[:10]


def test_a_selective_filter_searched_through_the_graph_still_returns_k(filled, monkeypatch):
    """Past the exact-scan limit a filter goes through the ANN index: a selective one must still fill k."""
    store, ids, vectors = filled
    monkeypatch.setattr(pg_backend, "HNSW_MIN", 100)
    store.save_index()
    assert store.index_description().startswith(("HNSW", "Flat"))
    monkeypatch.setattr(pg_backend, "EXACT_FILTER_LIMIT", {True: 0, False: 0})
    hits = store.search(vectors[0], 10)
    assert [i for i, _ in hits][:1] == [int(ids[0])] and len(hits) == 10
    filters = Filters(taken_from=date(2020, 3, 1), taken_to=date(2020, 3, 12))  # 12 of 400 images
    allowed = {int(ids[n]) for n in range(60, 72)}
    hits = store.search(vectors[0], 10, filters=filters)
    assert [i for i, _ in hits] == exact(vectors, ids, vectors[0], allowed)[:10]


def test_tags_bulk_inserted_filter_searches(filled):
    store, ids, vectors = filled
    tagged = [int(i) for i in ids[::40]]
    with store.session() as s:
        store.insert_rows(
            s,
            "tags",
            ("image_id", "label_set", "label", "score", "model"),
            [(i, "kind", "Dog", 0.9, "m") for i in tagged],
        )
        s.commit()  # fmt: skip
    hits = store.search(vectors[1], 20, filters=Filters(tag="dog"))
    assert [i for i, _ in hits] == exact(vectors, ids, vectors[1], tagged)


def test_changed_deleted_and_skipped_rows(filled):
    store, ids, vectors = filled
    new = planted_vectors(1, seed=9)[0]
    with store.session() as s:
        changed, skipped = s.get(Image, int(ids[5])), s.get(Image, int(ids[6]))
        skipped.status, skipped.skip_reason = SKIPPED, "corrupt: test"
        store.commit_images(s, [changed, skipped], {0: new})
    store.delete_images([int(ids[7]), int(ids[8])])
    assert store.search(new, 1)[0] == (int(ids[5]), pytest.approx(1.0, abs=1e-3))
    np.testing.assert_allclose(store.vector(int(ids[5])), new, atol=1e-3)
    gone = {int(ids[6]), int(ids[7]), int(ids[8])}
    assert all(store.vector(i) is None for i in gone)
    assert not gone & {i for i, _ in store.search(vectors[6], 30)}
    assert store.counts() == {INDEXED: COUNT - 3, SKIPPED: 1}
    assert store.count_vectors() == COUNT - 3


def test_vectors_stream_in_id_order_and_since_a_time(filled):
    store, ids, vectors = filled
    chunks = list(store.iter_vectors(chunk_size=150))
    assert [len(c) for c, _ in chunks] == [150, 150, 100]
    np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks]), ids)
    np.testing.assert_allclose(np.concatenate([v for _, v in chunks]), vectors, atol=1e-6)
    np.testing.assert_allclose(store.vectors_of(ids[[9, 2]]), vectors[[9, 2]], atol=1e-6)
    later = utcnow()
    assert list(store.iter_vectors(indexed_after=later)) == [] and store.count_vectors(indexed_after=later) == 0
    with store.session() as s:
        row = s.get(Image, int(ids[3]))
        row.indexed_at = utcnow()
        store.commit_images(s, [row], {0: vectors[3]})
    assert [c.tolist() for c, _ in store.iter_vectors(indexed_after=later)] == [[int(ids[3])]]


def test_caption_text_search_matches_word_forms_with_filters(filled):
    store, ids, _ = filled
    texts = {0: "a dog running on the beach", 1: "two dogs asleep on a sofa", 2: "a red car", 3: "a dog and a cat"}
    with store.session() as s:
        for n, caption in texts.items():
            s.add(Caption(image_id=int(ids[n]), model="blip", text=caption, created_at=utcnow()))
        s.add(Caption(image_id=int(ids[2]), model="other", text="a dog behind a red car", created_at=utcnow()))
        s.commit()
    found = store.match_captions("Dogs!", 10)
    assert {i for i, _, _ in found} == {int(ids[n]) for n in (0, 1, 2, 3)}
    assert dict((i, t) for i, _, t in found)[int(ids[2])] == "a dog behind a red car"  # its caption that matched
    assert [s for _, s, _ in found] == sorted((s for _, s, _ in found), reverse=True)
    shop = store.match_captions("dog", 10, Filters(folder="/photos/shop"))
    assert {i for i, _, _ in shop} == {int(ids[1]), int(ids[3])}
    assert store.match_captions("   ", 10) == [] and store.match_captions("zebra", 10) == []
    assert store.text_sources() == {"caption"}


def test_text_read_in_images_is_searched_apart_from_captions(filled):
    store, ids, _ = filled
    assert "text" not in store.text_sources()
    with store.session() as s:
        s.add(Caption(image_id=int(ids[0]), model="blip", text="a receipt on a table", created_at=utcnow()))
        s.add(Caption(image_id=int(ids[1]), model=f"{READ_TEXT}reader", text="TOTAL 42.50\nTHANK YOU",
                      created_at=utcnow()))  # fmt: skip
        s.commit()
    assert [i for i, _, _ in store.match_captions("42.50 receipt", 10, source="text")] == [int(ids[1])]
    assert [i for i, _, _ in store.match_captions("42.50 receipt", 10)] == [int(ids[0])]  # captions only
    assert store.text_sources() == {"caption", "text"}
    assert store.hit_rows([int(ids[1])])[int(ids[1])][1] is None  # not a caption
    with store.session() as s:  # a changed image loses its read text with its captions
        store.delete_captions(s, [int(ids[1])])
        s.commit()
    assert store.match_captions("42.50", 10, source="text") == []


def test_substrings_of_read_text_captions_and_names_are_found(filled):
    """Pieces of a word or a number (pg_trgm / FTS5 trigrams), after whole words, with the same answers on both
    backends; file and folder names the same way."""
    store, ids, _ = filled
    with store.session() as s:
        s.add(Caption(image_id=int(ids[0]), model="blip", text="boats in the harbour at dusk", created_at=utcnow()))
        s.add(Caption(image_id=int(ids[1]), model="blip", text="a harb seal", created_at=utcnow()))
        s.add(Caption(image_id=int(ids[2]), model=f"{READ_TEXT}reader", text="TOTAL 42.50", created_at=utcnow()))
        s.add(Caption(image_id=int(ids[3]), model=f"{READ_TEXT}reader", text="100% cotton_blend", created_at=utcnow()))
        s.commit()
    assert [(i, score) for i, score, _ in store.match_captions("harb", 10)][1] == (int(ids[0]), 0.0)
    assert [i for i, _, _ in store.match_captions("harb", 10)] == [int(ids[1]), int(ids[0])]  # the word first
    assert [i for i, _, t in store.match_captions("ARBOUR", 10)] == [int(ids[0])]
    assert [i for i, _, _ in store.match_captions("42.5", 10, source="text")] == [int(ids[2])]
    for wildcards in ("1%0", "t_n"):  # as LIKE patterns they would match "100%" and "cotton"
        assert store.match_captions(wildcards, 10, source="text") == []
    assert store.match_captions("0%", 10, source="text") == []  # shorter than a trigram
    assert [i for i, _, _ in store.match_captions("on_b", 10, source="text")] == [int(ids[3])]
    assert store.match_captions("harb", 10, Filters(folder="/photos/wedding")) == [(int(ids[0]), 0.0, ANY)]

    # Names: images 0..399 are "<i // 100>/img<i:04d>.jpg" in two roots.
    assert [(i, score) for i, score, _ in store.match_names("IMG0123", 5)] == [(int(ids[123]), 1.0)]
    both = store.match_names("img012 img0120.jpg", 20)
    assert [(i, score) for i, score, _ in both][:2] == [(int(ids[120]), 1.0), (int(ids[121]), 0.5)]
    assert [i for i, _, _ in both] == [int(ids[n]) for n in range(120, 130)]
    assert both[0][2] == "1/img0120.jpg"
    shop = store.match_names("img012", 10, Filters(folder="/photos/shop"))
    assert [i for i, _, _ in shop] == [int(ids[n]) for n in range(121, 130, 2)]
    assert store.match_names("im", 10) == [] and store.match_names("zebra", 10) == []


def test_metadata_keywords_filter_and_are_searched_apart_from_captions(filled):
    store, ids, vectors = filled
    with store.session() as s:
        for n in (3, 8, 9):
            s.add(Keyword(image_id=int(ids[n]), keyword="Paris", folded="paris"))
        s.add(Caption(image_id=int(ids[8]), model=METADATA_TEXT, text="Eiffel tower\nParis", created_at=utcnow()))
        s.add(Caption(image_id=int(ids[9]), model="blip", text="a tower at night", created_at=utcnow()))
        s.commit()
    allowed = {int(ids[n]) for n in (3, 8, 9)}
    found = [i for i, _ in store.search(vectors[3], 10, filters=Filters(keyword=" PARIS "))]
    assert found == exact(vectors, ids, vectors[3], allowed)
    assert [i for i, _, _ in store.match_captions("tower", 10, source="keyword")] == [int(ids[8])]
    assert [i for i, _, _ in store.match_captions("tower", 10)] == [int(ids[9])]  # captions alone
    assert "keyword" in store.text_sources() and store.hit_rows([int(ids[8])])[int(ids[8])][1] is None


def test_a_random_sample_of_stored_vectors(filled):
    store, ids, vectors = filled
    sample, count = store.sample_vectors(50)
    assert count == COUNT and sample.shape == (50, DIM)
    nearest = (sample @ vectors.T).argmax(axis=1)
    assert ((sample @ vectors.T).max(axis=1) > 0.999).all()  # stored vectors (kept in half precision)
    assert len(set(nearest.tolist())) == 50  # each drawn once
    everything, count = store.sample_vectors(COUNT + 1)
    assert count == COUNT and everything.shape == (COUNT, DIM)


def test_rows_read_back_and_the_store_reopens(filled, store_location):
    store, ids, vectors = filled
    path = Path(ROOTS[1]) / "0" / "img0001.jpg"
    assert store.find_path(path) == int(ids[1])
    assert store.paths([int(ids[1])]) == {int(ids[1]): str(path)}
    assert store.hit_rows([int(ids[1])]) == {
        int(ids[1]): (str(path), None, store.image(int(ids[1])).taken_at, None, None)
    }
    assert store.roots() == sorted(ROOTS)
    with store.session() as s:
        assert s.scalar(select(Image.size).where(Image.id == int(ids[4]))) == 1004
    again = open_store(store_location)
    assert (again.model, again.dim) == ("m", DIM)
    assert again.search(vectors[11], 5) == store.search(vectors[11], 5)
    with pytest.raises(ModelMismatchError, match="was built with m"):
        open_store(store_location, model="other")


def test_a_missing_store_is_not_created_by_readers(store_location):
    with pytest.raises(StoreNotFoundError, match="index a folder"):
        open_store(store_location)
    with pytest.raises(StoreNotFoundError):  # and still not there
        open_store(store_location)

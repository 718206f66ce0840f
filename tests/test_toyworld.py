"""What search means, tested in the toy world (tests/support/toyworld.py) with the CLIP trained on it
(tests/data/toyworld-clip): random-weight models can test the plumbing, only a model that knows its world can
test that "something yellow" finds the yellow pictures.

One collection (the toy_world fixture: 20 pictures of each of the 24 colour-and-shape classes plus three copies) is
indexed once through the library; each test compares what the Service answers with the truth kept beside the
pictures (file names carry none). Bars that are not exact were measured at seed 0 and on seeds 0-5: each comment
gives both.
"""

from collections import Counter

import numpy as np
import pytest
from sqlalchemy import delete, select

from indexer.store import Caption, Tag, utcnow
from search.service import DuplicateKind, DuplicateOptions, check_request
from tests.support import toyworld

VOCABULARY = [*toyworld.COLOURS, *toyworld.SHAPES]


def precision_recall(found: set[int], wanted: set[int]) -> tuple[float, float]:
    right = len(found & wanted)
    return right / max(len(found), 1), right / len(wanted)


def test_the_model_names_each_stored_picture(toy_world):
    """Through clipdex's own text tower and stored vectors, the best of the 24 class prompts is the picture's class."""
    prompts = [f"a photo of a {colour} {shape}" for colour, shape in toyworld.CLASSES]
    ids = sorted(toy_world.truth)
    scores = toy_world.service.store.vectors_of(np.array(ids)) @ toy_world.service.text_tower.embed_texts(prompts).T
    named = [toyworld.CLASSES[best] for best in scores.argmax(axis=1)]
    truth = [(toy_world.truth[i].colour, toy_world.truth[i].shape) for i in ids]
    right = np.mean([shown == cls for shown, cls in zip(truth, named, strict=True)])
    assert right >= 0.98  # 0.992 (seeds 0-5: 0.986-0.998)


@pytest.mark.parametrize("query", ["something yellow", "a photo of a red circle", "a star"])
def test_relevant_hits_are_what_the_query_describes(toy_world, query):
    """The relevance cut-off keeps a colour (a sixth of the store), a shape (a quarter) and a class (1/24)."""
    hits = toy_world.service.search(query, mode="embedding", k=500, relevant=True)
    wanted = toy_world.showing(lambda p: toyworld.describes(query, p))
    precision, recall = precision_recall({hit.id for hit in hits}, wanted)
    assert precision >= 0.95 and recall >= 0.95  # exactly the matches at seed 0 (seeds 0-5: each >= 0.988)


@pytest.mark.parametrize("query", ["a dog", "a photo of a cat", "a giraffe"])
def test_subjects_absent_from_the_world_find_nothing(toy_world, query):
    """Nothing is relevant to things the model learnt are in no picture, nor to a word it does not know."""
    assert toy_world.service.search(query, mode="embedding", k=500, relevant=True) == []


def test_plain_ranking_puts_the_described_class_first(toy_world):
    hits = toy_world.service.search("a photo of a red circle", mode="embedding", k=10)
    assert [toy_world.truth[hit.id].label for hit in hits] == ["red circle"] * 10


def test_similar_pictures_are_the_class_of_the_query_picture(toy_world):
    """For the first stored picture of each class, the relevant hits of similar() are its class mates."""
    first_of_class = {}
    for name in toy_world.originals:
        picture = toy_world.truth[toy_world.ids[name]]
        first_of_class.setdefault((picture.colour, picture.shape), toy_world.ids[name])
    good = []
    for cls, query in first_of_class.items():
        hits = toy_world.service.similar(query, k=500, relevant=True)
        precision, recall = precision_recall({hit.id for hit in hits}, toy_world.of_class(cls) - {query})
        good += [cls] if precision >= 0.9 and recall >= 0.9 else []
    # 19 of 24 at seed 0 (seeds 0-5: 19-21; short of the bars: green squares and triangles, which lie close in
    # the model's image space, and some yellow classes). A picture whose class mates slope off gently can get no
    # hits at all: no valley, and the rare rule alone puts the cut above 1 (search/relevance.py).
    assert len(good) >= 16, sorted(set(toyworld.CLASSES) - set(good))


@pytest.mark.parametrize("attribute, labels", [("colour", toyworld.COLOURS), ("shape", toyworld.SHAPES)])
def test_zero_shot_tags_name_each_pictures_colour_and_shape(toy_world, attribute, labels):
    """Tagged as `clipdex tag --labels red,orange,...` does (default templates, the best label per picture)."""
    name = f"{attribute}s"
    toy_world.service.tag(check_request(list(labels), name=name))
    with toy_world.service.store.session() as s:
        tags = s.execute(select(Tag.image_id, Tag.label).where(Tag.label_set == name)).all()
    assert len(tags) == len(toy_world.truth)
    right = np.mean([getattr(toy_world.truth[image_id], attribute) == label for image_id, label in tags])
    assert right >= 0.98  # colour 1.0, shape 0.988 (seeds 0-5: colour 1.0, shape 0.986-0.996)


def test_clusters_are_named_for_what_their_pictures_share(toy_world):
    """24 clusters named from the toy vocabulary: the best name fits (nearly) every member; a cluster of one
    class is named by its colour and its shape. (The default vocabulary has no colour or shape words.)"""
    clustering = toy_world.service.clusters(k=len(toyworld.CLASSES), labels=VOCABULARY)
    one_class = 0
    for cluster in clustering.clusters:
        pictures = [toy_world.truth[i] for i in cluster.members.tolist()]
        best = cluster.labels[0][0]
        assert np.mean([best in (p.colour, p.shape) for p in pictures]) >= 0.9  # 1.0 in every cluster, seeds 0-5
        label, count = Counter(p.label for p in pictures).most_common(1)[0]
        if count >= 0.9 * len(pictures):
            one_class += 1
            assert {name for name, _ in cluster.labels[:2]} == set(label.split())
    # k-means merges some classes (yellow circles with yellow squares) and splits others (green squares)
    assert one_class >= 15  # 20 (seeds 0-5: 18-23)


@pytest.mark.parametrize(
    "query, wanted", [("a red circle - red + blue", "blue circle"), ("a purple star - star + square", "purple square")]
)
def test_query_arithmetic_swaps_a_colour_or_a_shape(toy_world, query, wanted):
    hits = toy_world.service.search(query, mode="embedding", k=10)
    assert sum(toy_world.truth[hit.id].label == wanted for hit in hits) >= 8  # 10 of 10 (seeds 0-5)


def test_copies_are_grouped_with_their_originals(toy_world):
    groups = toy_world.service.duplicates(DuplicateOptions())
    group_of = {member.id: n for n, group in enumerate(groups) for member in group.members}
    for copy, original in toy_world.copies.items():
        assert toy_world.ids[original] in group_of
        assert group_of.get(toy_world.ids[copy]) == group_of[toy_world.ids[original]], copy
    # near copies in this model's eyes are at least the same colour (no group mixes colours at seeds 0-5)
    assert all(len({toy_world.truth[m.id].colour for m in group.members}) == 1 for group in groups)


def test_only_the_same_bytes_are_identical(toy_world):
    """At similarity 1.0 only the byte copy joins its original, by its content hash: the float16 vector of one
    picture scores 0.9998-1.0001 with itself; the other copies score up to 0.99999, class mates up to 0.9998."""
    options = DuplicateOptions(kinds=(DuplicateKind.exact, DuplicateKind.similar), similarity=1.0)
    names = {i: name for name, i in toy_world.ids.items()}
    assert [({names[m.id] for m in group.members}, group.kind) for group in toy_world.service.duplicates(options)] == [
        ({"img00000.png", "copy-same-bytes.png"}, DuplicateKind.exact)
    ]


@pytest.mark.xfail(strict=True, reason="the toy model sees colour and shape only: class mates score up to 0.9998")
def test_class_mates_are_not_near_copies(toy_world):
    """Two different pictures of one class are no duplicates at the default threshold. The toy CLIP cannot tell
    them apart (91-96% of class-mate pairs score >= 0.95, up to 0.9998), so this fails until a model sees
    position and size too: an XPASS says it is time to drop the xfail."""
    originals = {toy_world.ids[name] for name in toy_world.originals}
    for group in toy_world.service.duplicates(DuplicateOptions()):
        assert len({m.id for m in group.members} & originals) == 1


def test_hybrid_adds_caption_matches_to_the_relevant_pictures(toy_world):
    """Hybrid mode fuses the picture ranking with caption matches: a picture whose caption names the query joins the
    relevant hits whatever it shows (text that matches is evidence of its own), and one that both find ranks first."""
    red_circle, blue_square = min(toy_world.of_class(("red", "circle"))), min(toy_world.of_class(("blue", "square")))
    with toy_world.service.store.session() as s:
        for image_id in (red_circle, blue_square):
            s.add(Caption(image_id=image_id, model="toy", prompt="", text="a red circle", created_at=utcnow()))
        s.commit()
    try:
        hits = toy_world.service.search("red circle", mode="hybrid", k=500, relevant=True)
        found = {hit.id for hit in hits}
        precision, recall = precision_recall(found - {blue_square}, toy_world.of_class(("red", "circle")))
        assert blue_square in found and precision == 1 and recall >= 0.95  # 19 of 20 at seed 0
        assert hits[0].id == red_circle and hits[0].caption == "a red circle"
    finally:
        with toy_world.service.store.session() as s:
            s.execute(delete(Caption).where(Caption.model == "toy"))
            s.commit()

"""What search means, tested in the toy world (tests/support/toyworld.py) with the CLIP trained on it
(tests/data/toyworld-clip): random-weight models can test the plumbing, only a model that knows its world can
test that "something yellow" finds the yellow pictures.

One collection, 20 pictures of each of the 24 colour-and-shape classes plus three copies, is indexed once through
the library; each test compares what the Service answers with the truth kept beside the pictures (file names
carry none). Bars that are not exact were measured at SEED and on seeds 0-5: each comment gives both.
"""

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import delete, select

from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import NO_FILTERS, Caption, Tag, utcnow
from search.duplicates import DEFAULT_THRESHOLD  # the CLI's default too (search/cli/collection.py)
from search.service import Service, check_request
from tests.support import toyworld

MODEL = Path(__file__).parent / "data" / "toyworld-clip"
SEED = 0
PER_CLASS = 20
VOCABULARY = [*toyworld.COLOURS, *toyworld.SHAPES]


@dataclass
class World:
    service: Service
    truth: dict[int, toyworld.Picture]  # what each stored image shows, by id; a copy shows its original
    ids: dict[str, int]  # stored image ids by file name
    originals: list[str]  # the drawn pictures' file names, in order
    copies: dict[str, str]  # copy name -> original name

    def showing(self, fits: Callable[[toyworld.Picture], bool]) -> set[int]:
        return {i for i, picture in self.truth.items() if fits(picture)}

    def of_class(self, cls: tuple[str, str]) -> set[int]:
        return self.showing(lambda p: (p.colour, p.shape) == cls)


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
    PILImage.open(folder / "img00001.png").save(folder / "copy-resaved.jpg", quality=95, subsampling=0)
    enlarged = PILImage.open(folder / "img00002.png").resize((96, 96), PILImage.Resampling.BICUBIC)
    enlarged.save(folder / "copy-enlarged.png")  # seen at 48 pixels again: cosine 0.998-0.9999
    return copies


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    folder = tmp_path_factory.mktemp("toyworld")
    pictures = toyworld.collection({cls: PER_CLASS for cls in toyworld.CLASSES}, seed=SEED)
    by_name = toyworld.write_collection(folder, pictures)
    originals = sorted(by_name)
    copies = write_copies(folder)
    by_name |= {copy: by_name[original] for copy, original in copies.items()}
    settings = Settings(store=tmp_path_factory.mktemp("toystore") / "store", model=str(MODEL), device="cpu")
    index_folder(folder, settings, show_progress=False)
    service = Service(settings)
    paths = service.store.paths(service.store.matching_ids(NO_FILTERS).tolist())
    ids = {Path(path).name: i for i, path in paths.items()}
    assert ids.keys() == by_name.keys()
    return World(service, {i: by_name[name] for name, i in ids.items()}, ids, originals, copies)


def precision_recall(found: set[int], wanted: set[int]) -> tuple[float, float]:
    right = len(found & wanted)
    return right / max(len(found), 1), right / len(wanted)


def test_the_model_names_each_stored_picture(world):
    """Through clipdex's own text tower and stored vectors, the best of the 24 class prompts is the picture's class."""
    prompts = [f"a photo of a {colour} {shape}" for colour, shape in toyworld.CLASSES]
    ids = sorted(world.truth)
    scores = world.service.store.vectors_of(np.array(ids)) @ world.service.text_tower.embed_texts(prompts).T
    named = [toyworld.CLASSES[best] for best in scores.argmax(axis=1)]
    right = np.mean([(world.truth[i].colour, world.truth[i].shape) == cls for i, cls in zip(ids, named, strict=True)])
    assert right >= 0.98  # 0.992 (seeds 0-5: 0.986-0.998)


@pytest.mark.parametrize("query", ["something yellow", "a photo of a red circle", "a star"])
def test_relevant_hits_are_what_the_query_describes(world, query):
    """The relevance cut-off keeps a colour (a sixth of the store), a shape (a quarter) and a class (1/24)."""
    hits = world.service.search(query, mode="embedding", k=500, relevant=True)
    wanted = world.showing(lambda p: toyworld.describes(query, p))
    precision, recall = precision_recall({hit.id for hit in hits}, wanted)
    assert precision >= 0.95 and recall >= 0.95  # exactly the matches at seed 0 (seeds 0-5: each >= 0.988)


@pytest.mark.parametrize("query", ["a dog", "a photo of a cat", "a giraffe"])
def test_subjects_absent_from_the_world_find_nothing(world, query):
    """Nothing is relevant to things the model learnt are in no picture, nor to a word it does not know."""
    assert world.service.search(query, mode="embedding", k=500, relevant=True) == []


def test_plain_ranking_puts_the_described_class_first(world):
    hits = world.service.search("a photo of a red circle", mode="embedding", k=10)
    assert [world.truth[hit.id].label for hit in hits] == ["red circle"] * 10


def test_similar_pictures_are_the_class_of_the_query_picture(world):
    """For the first stored picture of each class, the relevant hits of similar() are its class mates."""
    first_of_class = {}
    for name in world.originals:
        picture = world.truth[world.ids[name]]
        first_of_class.setdefault((picture.colour, picture.shape), world.ids[name])
    good = []
    for cls, query in first_of_class.items():
        hits = world.service.similar(query, k=500, relevant=True)
        precision, recall = precision_recall({hit.id for hit in hits}, world.of_class(cls) - {query})
        good += [cls] if precision >= 0.9 and recall >= 0.9 else []
    # 19 of 24 at seed 0 (seeds 0-5: 19-21; short of the bars: green squares and triangles, which lie close in
    # the model's image space, and some yellow classes). A picture whose class mates slope off gently can get no
    # hits at all: no valley, and the rare rule alone puts the cut above 1 (search/relevance.py).
    assert len(good) >= 16, sorted(set(toyworld.CLASSES) - set(good))


@pytest.mark.parametrize("attribute, labels", [("colour", toyworld.COLOURS), ("shape", toyworld.SHAPES)])
def test_zero_shot_tags_name_each_pictures_colour_and_shape(world, attribute, labels):
    """Tagged as `clipdex tag --labels red,orange,...` does (default templates, the best label per picture)."""
    name = f"{attribute}s"
    world.service.tag(check_request(list(labels), name=name))
    with world.service.store.session() as s:
        tags = s.execute(select(Tag.image_id, Tag.label).where(Tag.label_set == name)).all()
    assert len(tags) == len(world.truth)
    right = np.mean([getattr(world.truth[image_id], attribute) == label for image_id, label in tags])
    assert right >= 0.98  # colour 1.0, shape 0.988 (seeds 0-5: colour 1.0, shape 0.986-0.996)


def test_clusters_are_named_for_what_their_pictures_share(world):
    """24 clusters named from the toy vocabulary: the best name fits (nearly) every member; a cluster of one
    class is named by its colour and its shape. (The default vocabulary has no colour or shape words.)"""
    clustering = world.service.clusters(k=len(toyworld.CLASSES), labels=VOCABULARY)
    one_class = 0
    for cluster in clustering.clusters:
        pictures = [world.truth[i] for i in cluster.members.tolist()]
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
def test_query_arithmetic_swaps_a_colour_or_a_shape(world, query, wanted):
    hits = world.service.search(query, mode="embedding", k=10)
    assert sum(world.truth[hit.id].label == wanted for hit in hits) >= 8  # 10 of 10 (seeds 0-5)


def test_copies_are_grouped_with_their_originals(world):
    groups = world.service.duplicates(DEFAULT_THRESHOLD)
    group_of = {member.id: n for n, group in enumerate(groups) for member in group.members}
    for copy, original in world.copies.items():
        assert world.ids[original] in group_of
        assert group_of.get(world.ids[copy]) == group_of[world.ids[original]], copy
    # near copies in this model's eyes are at least the same colour (no group mixes colours at seeds 0-5)
    assert all(len({world.truth[m.id].colour for m in group.members}) == 1 for group in groups)


def test_only_the_same_bytes_are_identical(world):
    """At threshold 1.0 only the byte copy joins its original, by its content hash: the float16 vector of one
    picture scores 0.9998-1.0001 with itself; the other copies score up to 0.99999, class mates up to 0.9998."""
    groups = world.service.duplicates(1.0)
    names = {i: name for name, i in world.ids.items()}
    assert [({names[m.id] for m in group.members}, group.exact) for group in groups] == [
        ({"img00000.png", "copy-same-bytes.png"}, True)
    ]


@pytest.mark.xfail(strict=True, reason="the toy model sees colour and shape only: class mates score up to 0.9998")
def test_class_mates_are_not_near_copies(world):
    """Two different pictures of one class are no duplicates at the default threshold. The toy CLIP cannot tell
    them apart (91-96% of class-mate pairs score >= 0.95, up to 0.9998), so this fails until a model sees
    position and size too: an XPASS says it is time to drop the xfail."""
    originals = {world.ids[name] for name in world.originals}
    for group in world.service.duplicates(DEFAULT_THRESHOLD):
        assert len({m.id for m in group.members} & originals) == 1


def test_hybrid_adds_caption_matches_to_the_relevant_pictures(world):
    """Hybrid mode fuses the picture ranking with caption matches: a picture whose caption names the query joins the
    relevant hits whatever it shows (text that matches is evidence of its own), and one that both find ranks first."""
    red_circle, blue_square = min(world.of_class(("red", "circle"))), min(world.of_class(("blue", "square")))
    with world.service.store.session() as s:
        for image_id in (red_circle, blue_square):
            s.add(Caption(image_id=image_id, model="toy", prompt="", text="a red circle", created_at=utcnow()))
        s.commit()
    try:
        hits = world.service.search("red circle", mode="hybrid", k=500, relevant=True)
        found = {hit.id for hit in hits}
        precision, recall = precision_recall(found - {blue_square}, world.of_class(("red", "circle")))
        assert blue_square in found and precision == 1 and recall >= 0.95  # 19 of 20 at seed 0
        assert hits[0].id == red_circle and hits[0].caption == "a red circle"
    finally:
        with world.service.store.session() as s:
            s.execute(delete(Caption).where(Caption.model == "toy"))
            s.commit()

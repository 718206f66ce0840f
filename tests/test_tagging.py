"""Zero-shot tagging: exact tags on planted vectors, CLIP softmax vs SigLIP sigmoid, label sets, --retag, errors."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from sqlalchemy import select
from transformers import AutoModel, AutoTokenizer
from typer.testing import CliRunner

from indexer.decode import decode_image
from indexer.enrich.labels import (
    DEFAULT_TEMPLATES,
    MAX_LABELS,
    LabelSetRequest,
    check_request,
    check_templates,
    parse_labels,
    read_labels_file,
)
from indexer.enrich.tags import (
    Classifier,
    TagOptions,
    label_counts,
    retag_store,
    tag_store,
)
from indexer.errors import BadInputError, NotFoundError
from indexer.models.embedder import image_inputs
from indexer.models.loading import load_model
from indexer.settings import Settings
from indexer.store import SKIPPED, Image, LabelSet, Tag, open_store, utcnow
from search.cli import app
from search.service import Service
from tests.support.photos import photo, write_photos
from tests.support.stores import plant

LABELS = ["cat", "dog", "beach", "sunset"]
runner = CliRunner()


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x)


def tags_of(store, label_set: str = "default") -> dict[int, dict[str, float]]:
    with store.session() as s:
        rows = s.execute(select(Tag.image_id, Tag.label, Tag.score).where(Tag.label_set == label_set)).all()
    out: dict[int, dict[str, float]] = {}
    for image_id, label, score in rows:
        out.setdefault(image_id, {})[label] = score
    return out


@pytest.fixture
def planted(tmp_path):
    """A 4-d store whose images lie near one label axis each (image i near label i % 4), plus a cat-dog mix."""
    store = open_store(tmp_path / "store", model="planted", dim=4, create=True)
    rng = np.random.default_rng(0)
    near = [unit(np.eye(4)[i % 4] + rng.normal(0, 0.05, 4)) for i in range(40)]
    ids = plant(store, np.stack(near + [unit([1, 1, 0, 0])]))
    return store, ids


def axes_classifier(activation: str, scale: float = 100.0, bias: float = 0.0) -> Classifier:
    return Classifier(list(LABELS), np.eye(4, dtype=np.float32), activation, scale, bias)


def test_planted_vectors_get_their_nearest_label(planted):
    store, ids = planted
    summary = tag_store(store, axes_classifier("softmax"), ["{}"], TagOptions(), "animals")
    got = tags_of(store, "animals")
    assert summary.images == 41 and summary.tags == 41
    for i, image_id in enumerate(ids[:40]):
        assert list(got[image_id]) == [LABELS[i % 4]]
        assert got[image_id][LABELS[i % 4]] > 0.99  # softmax at scale 100 over well-separated labels
    mixed = got[ids[40]]  # exactly between cat and dog: a tie, the softmax splits it
    assert len(mixed) == 1 and set(mixed) <= {"cat", "dog"}
    assert next(iter(mixed.values())) == pytest.approx(0.5, abs=1e-4)
    assert summary.counts == {"cat": 11, "dog": 10, "beach": 10, "sunset": 10} or summary.counts == {
        "cat": 10,
        "dog": 11,
        "beach": 10,
        "sunset": 10,
    }


def test_multi_label_threshold_keeps_every_label_above_it(planted):
    store, ids = planted
    # sigmoid(10 * cos - 5): > 0.5 only where cos > 0.5, so the cat-dog mix (cos 0.707 to both) gets both.
    tag_store(store, axes_classifier("sigmoid", 10.0, -5.0), ["{}"], TagOptions(multi_label=True), "multi")
    got = tags_of(store, "multi")
    assert sorted(got[ids[40]]) == ["cat", "dog"]
    assert got[ids[40]]["cat"] == pytest.approx(
        1 / (1 + np.exp(-(10 * np.sqrt(0.5) - 5))), rel=1e-3
    )  # vectors are stored as float16
    for i, image_id in enumerate(ids[:40]):
        assert list(got[image_id]) == [LABELS[i % 4]]


def test_top_k_and_threshold_combine(planted):
    store, ids = planted
    tag_store(store, axes_classifier("softmax", 1.0), ["{}"], TagOptions(top_k=3), "top3")
    assert all(len(labels) == 3 for labels in tags_of(store, "top3").values())
    # At scale 1 the best label has about e^1 / (e^1 + 3) = 0.475: a 0.45 threshold keeps only it.
    tag_store(store, axes_classifier("softmax", 1.0), ["{}"], TagOptions(top_k=3, threshold=0.45), "top3")
    got = tags_of(store, "top3")
    assert [list(got[i]) for i in ids[:4]] == [["cat"], ["dog"], ["beach"], ["sunset"]]
    assert ids[40] not in got  # its best label scores 0.40 < 0.45: no tag at all


def test_retagging_a_set_replaces_it_and_other_sets_stay(planted):
    store, ids = planted
    tag_store(store, axes_classifier("softmax"), ["{}"], TagOptions(), "a")
    tag_store(store, axes_classifier("softmax"), ["{}"], TagOptions(top_k=2), "b")
    other = Classifier(["x", "y"], np.eye(4, dtype=np.float32)[:2], "softmax", 100.0, 0.0)
    tag_store(store, other, ["photo of {}"], TagOptions(), "a")
    assert {label for labels in tags_of(store, "a").values() for label in labels} == {"x", "y"}
    assert len(tags_of(store, "b")) == 41
    with store.session() as s:
        saved = s.scalars(select(LabelSet).order_by(LabelSet.name)).all()
    assert [(ls.name, ls.labels, ls.templates) for ls in saved] == [
        ("a", ["x", "y"], ["photo of {}"]),
        ("b", LABELS, ["{}"]),
    ]
    counts = label_counts(store)
    assert sum(n for name, _, n in counts if name == "b") == 82  # top-2: every image has two tags
    assert [(name, label) for name, label, _ in counts if name == "a"] == [("a", "x"), ("a", "y")]
    with pytest.raises(NotFoundError):
        label_counts(store, "nope")


def test_retag_store_tags_only_images_indexed_since(planted):
    store, ids = planted
    tag_store(store, axes_classifier("softmax"), ["{}"], TagOptions(), "animals")
    before = tags_of(store, "animals")
    new_ids = plant(store, np.stack([unit([0, 0, 0, 1]), unit([0, 0, 1, 0])]))
    [summary] = retag_store(store)
    assert summary.images == 2 and summary.tags == 2
    got = tags_of(store, "animals")
    assert list(got[new_ids[0]]) == ["sunset"] and list(got[new_ids[1]]) == ["beach"]
    assert {i: got[i] for i in before} == before
    assert retag_store(store)[0].images == 0  # nothing new since

    # A changed file keeps its id and gets a new vector: its old tag goes, the new one comes.
    with store.session() as s:
        changed = s.get(Image, ids[0])  # was a cat
        changed.indexed_at = utcnow()
        broken = s.get(Image, ids[1])  # was a dog; now unreadable
        broken.status, broken.skip_reason = SKIPPED, "decode: truncated"
        store.commit_images(s, [changed, broken], {0: unit([0, 1, 0, 0])})
    [summary] = retag_store(store)
    got = tags_of(store, "animals")
    assert summary.images == 1 and got[ids[0]] == {"dog": pytest.approx(1.0)} and ids[1] not in got


# --- real tiny models: CLIP softmax, SigLIP sigmoid, checked against the transformers model's own logits --


def engine_for(model_dir, tmp_path) -> Service:
    """A search engine over an empty store for the model: enough to classify uploaded images."""
    info = load_model(str(model_dir), "cpu").info
    open_store(tmp_path / "store", model=info.name, dim=info.dim, create=True)
    return Service(Settings(store=tmp_path / "store", device="cpu"))


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    photo(seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@torch.inference_mode()
def model_logits(engine: Service, data: bytes, texts: list[str]) -> np.ndarray:
    """logits_per_image from the transformers model's own forward pass, the zero-shot pipeline's numbers."""
    info = engine.embedder.info
    model = AutoModel.from_pretrained(info.name).eval()
    images = image_inputs([decode_image(data, info.prep, 10**8).pixels], info.prep)
    tokenizer = AutoTokenizer.from_pretrained(info.name)
    siglip = info.family == "siglip"
    padding = "max_length" if siglip else True
    tokens = tokenizer(texts, padding=padding, truncation=True, max_length=info.text_max_length, return_tensors="pt")
    kwargs = {"input_ids": tokens["input_ids"]} if siglip else dict(tokens)
    images = {k: torch.from_numpy(v) for k, v in images.items()}
    return model(**images, **kwargs).logits_per_image[0].numpy()


@pytest.fixture(scope="module", params=["siglip", "siglip2", "siglip2-naflex"])
def siglip_scaled_dir(request, tmp_path_factory):
    """A tiny SigLIP, SigLIP 2 or NaFlex SigLIP 2 with a trained-looking scale and bias (random init: 1 and 0)."""
    fixture = {"siglip": "siglip_dir", "siglip2": "siglip2_dir", "siglip2-naflex": "naflex_dir"}[request.param]
    source = request.getfixturevalue(fixture)
    out = tmp_path_factory.mktemp("models") / f"{request.param}-scaled"
    shutil.copytree(source, out)
    model = AutoModel.from_pretrained(source)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(20.0))
        model.logit_bias.fill_(-2.0)
    model.save_pretrained(out)
    return out


def test_clip_single_label_is_a_softmax_over_the_labels(clip_dir, tmp_path):
    engine = engine_for(clip_dir, tmp_path)
    labels = ["dog", "cat", "car", "sunset"]
    ranked = engine.classify(jpeg(1), labels, templates=["{}"])[0]
    expected = torch.softmax(torch.from_numpy(model_logits(engine, jpeg(1), labels)), 0).numpy()
    assert {r.label: r.score for r in ranked} == pytest.approx(dict(zip(labels, expected, strict=True)), abs=1e-5)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    assert sum(r.score for r in ranked) == pytest.approx(1.0, abs=1e-5)
    # A softmax shares its mass: adding a label lowers every other label's score.
    more = {r.label: r.score for r in engine.classify(jpeg(1), labels + ["beach"], templates=["{}"])[0]}
    assert all(more[label] < score for label, score in zip(labels, expected, strict=True))


def test_clip_multi_label_is_the_two_way_softmax_against_the_baseline(clip_dir, tmp_path):
    engine = engine_for(clip_dir, tmp_path)
    ranked = {r.label: r.score for r in engine.classify(jpeg(2), ["dog", "cat"], ["{}"], multi_label=True)[0]}
    for label in ("dog", "cat"):
        pair = torch.softmax(torch.from_numpy(model_logits(engine, jpeg(2), [label, "something"])), 0)
        assert ranked[label] == pytest.approx(float(pair[0]), abs=1e-5)


def test_siglip_is_a_sigmoid_with_its_bias_per_label(siglip_scaled_dir, tmp_path):
    engine = engine_for(siglip_scaled_dir, tmp_path)
    labels = ["dog", "cat", "car"]
    ranked = {r.label: r.score for r in engine.classify(jpeg(3), labels, templates=["{}"])[0]}
    logits = model_logits(engine, jpeg(3), labels)
    assert ranked == pytest.approx(dict(zip(labels, 1 / (1 + np.exp(-logits)), strict=True)), abs=1e-5)
    assert sum(ranked.values()) != pytest.approx(1.0, abs=1e-2)
    # Independent labels: adding one leaves the others exactly where they were, in both modes.
    more = {r.label: r.score for r in engine.classify(jpeg(3), labels + ["beach"], ["{}"], multi_label=True)[0]}
    assert {label: more[label] for label in labels} == pytest.approx(ranked, abs=1e-6)


# --- the CLI on a real indexed folder ---------------------------------------------------------------


def cli(*args: str):
    result = runner.invoke(app, list(args))
    return result


def test_cli_tag_search_and_retag_new_images(tmp_path, clip_dir):
    photos, store = tmp_path / "photos", str(tmp_path / "store")
    write_photos(photos, 4)
    common = ["--store", store, "--device", "cpu"]
    index_args = ["index", str(photos), "--model", str(clip_dir), "--workers", "1", *common]
    assert cli(*index_args).exit_code == 0
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# scenes\ndog\n\nbeach\n  # more\nsunset\n")
    result = cli("tag", "--labels-file", str(labels_file), "--name", "scenes", "--json", *common)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 4 and summary["tags"] == 4 and summary["labels"] == 3

    # The store's tags are what classifying the same image file on its own gives.
    engine = Service(Settings(store=tmp_path / "store", device="cpu"))
    [stored] = engine.image_info(engine.store.find_path(photos / "img000.jpg")).tags
    [best] = engine.classify((photos / "img000.jpg").read_bytes(), ["dog", "beach", "sunset"])[0][:1]
    assert stored == (best.label, pytest.approx(best.score, abs=1e-3))  # vectors are stored as float16

    listed = json.loads(cli("tags", "--store", store, "--json").stdout)
    assert sum(row["images"] for row in listed) == 4 and {row["label_set"] for row in listed} == {"scenes"}
    label = listed[0]["label"]
    hits = json.loads(cli("search", "a photo", "--tag", label, "-k", "10", "--json", *common).stdout)
    assert len(hits) == listed[0]["images"]
    opened = open_store(tmp_path / "store")
    tagged = {i for i, labels in tags_of(opened, "scenes").items() if label in labels}
    assert {h["id"] for h in hits} == tagged
    similar = json.loads(cli("similar", str(hits[0]["id"]), "--tag", label, "--json", *common).stdout)
    assert {h["id"] for h in similar} == tagged - {hits[0]["id"]}
    assert json.loads(cli("search", "a photo", "--tag", "nope", "--json", *common).stdout) == []

    write_photos(photos, 2, start=10)
    result = cli(*index_args, "--retag", "--json")
    assert result.exit_code == 0, result.output
    [retagged] = json.loads(result.stdout)["retagged"]
    assert retagged["label_set"] == "scenes" and retagged["images"] == 2
    assert len(tags_of(opened, "scenes")) == 6


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: parse_labels(" , ,"), "the label set is empty"),
        (lambda: parse_labels("cat,dog,Cat"), "duplicate labels (case is ignored): Cat"),
        (lambda: parse_labels(",".join(f"l{i}" for i in range(MAX_LABELS + 1))), "over the limit"),
        (lambda: parse_labels("x" * 300), "at most 200 characters"),
        (lambda: check_templates(["a photo of a cat"]), "needs one {} where the label goes"),
        (lambda: check_templates(["{} and {}"]), "needs one {}"),
        (lambda: TagOptions(top_k=5).resolved(4), "top_k must be between 1 and"),
        (lambda: TagOptions(threshold=1.5).resolved(4), "threshold is a probability"),
    ],
)
def test_bad_input_is_a_clear_error(make, message):
    with pytest.raises(BadInputError, match=None) as e:
        make()
    assert message in str(e.value)


def test_check_request(clip_dir, tmp_path):
    with pytest.raises(BadInputError, match="needs a name"):
        check_request(["cat"], name="  ")
    with pytest.raises(BadInputError, match="duplicate"):
        check_request(["cat", "cat "])
    request = check_request([" cat", "dog"], options=TagOptions(multi_label=True), name=" pets ")
    assert request == LabelSetRequest(("cat", "dog"), DEFAULT_TEMPLATES, TagOptions(None, 0.5, True), "pets")
    assert engine_for(clip_dir, tmp_path).tag(request).images == 0  # an empty store tags nothing


def test_labels_file_errors(tmp_path):
    (tmp_path / "only-comments.txt").write_text("# nothing\n\n")
    with pytest.raises(BadInputError, match="empty"):
        read_labels_file(tmp_path / "only-comments.txt")
    with pytest.raises(BadInputError, match="cannot read"):
        read_labels_file(tmp_path / "missing.txt")


def test_cli_rejects_bad_input_before_loading_a_model(tmp_path):
    store = str(tmp_path / "no-store")
    assert "exactly one of --labels" in cli("tag", "--store", store).output
    result = cli("tag", "--labels", "cat,cat", "--store", store)
    assert result.exit_code == 2 and "duplicate labels" in result.output
    result = cli("tag", "--labels", "cat", "--template", "no slot", "--store", store)
    assert result.exit_code == 2 and "needs one {}" in result.output

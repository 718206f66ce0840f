"""Duplicate groups on real photos: exact copies, the same picture resized or edited, a burst of similar shots; no
chaining; the keeper rule; kinds and thresholds; the pHash column's migration; CLI, CSV, API."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from PIL import ImageEnhance
from sqlalchemy import select, text
from typer.testing import CliRunner

import search.duplicates
from indexer.decode import perceptual_hash
from indexer.errors import BadInputError
from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import Image, open_store
from search.api import create_app
from search.cli import app
from search.duplicates import DuplicateKind, DuplicateOptions, find_duplicates
from tests.support.photos import photo
from tests.support.planted import plant_vectors, unit

EXACT, SAME, SIMILAR = DuplicateKind
COPIES = ["distinct/img00.jpg", "copies/img00 copy.jpg", "copies/img00 copy 2.jpg"]  # byte-identical


def save(img: PILImage.Image, path: Path, quality: int = 90, taken: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = PILImage.Exif()
    if taken:
        exif[0x0132] = taken  # DateTime, as a camera writes it
    img.save(path, quality=quality, exif=exif)


def resized(img: PILImage.Image, scale: float) -> PILImage.Image:
    return img.resize((int(img.width * scale), int(img.height * scale)), PILImage.LANCZOS)


def write_album(root: Path) -> None:
    """40 distinct photos; two byte-identical copies of distinct/img00; img01 resized twice and img02 brightened,
    each re-encoded; a burst of five different shots (their vectors are planted) of which shot2 is the largest."""
    for seed in range(40):
        save(photo(seed, (640, 480)), root / f"distinct/img{seed:02d}.jpg")
    for name in ("img00 copy.jpg", "img00 copy 2.jpg"):
        (root / "copies").mkdir(exist_ok=True)
        shutil.copyfile(root / "distinct/img00.jpg", root / "copies" / name)
    save(resized(photo(1, (640, 480)), 0.5), root / "resized/img01 small.jpg", quality=70)
    save(resized(photo(1, (640, 480)), 0.25), root / "resized/img01 tiny.jpg", quality=50)
    save(ImageEnhance.Brightness(resized(photo(2, (640, 480)), 0.8)).enhance(1.1), root / "resized/img02 edited.jpg")
    for n in range(1, 6):
        size = (800, 600) if n == 2 else (640, 480)
        taken = "2024:05:01 13:00:00" if n == 5 else f"2024:05:01 12:00:0{n}"  # shot5 an hour later
        save(photo(100 + n, size), root / f"burst/shot{n}.jpg", taken=taken)


def burst_vectors(dim: int, rng) -> dict[str, np.ndarray]:
    """Shots 1-4 on an arc, 14 degrees apart: each at cosine 0.97 to the next, 0.88 to the one after (below 0.95:
    shot4 chains to shot2 only through shot3); shot5 beside shot2 (cosine 0.99)."""
    u, v = np.linalg.qr(rng.standard_normal((dim, 2)))[0].T
    shots = {f"burst/shot{n}.jpg": unit(np.cos(np.radians(14 * (n - 1))) * u + np.sin(np.radians(14 * (n - 1))) * v)
             for n in range(1, 5)}  # fmt: skip
    shots["burst/shot5.jpg"] = unit(shots["burst/shot2.jpg"] + 0.1 * unit(rng.standard_normal(dim)))
    return shots


@pytest.fixture(scope="module")
def album(tmp_path_factory, clip_dir) -> tuple[Path, Settings, dict[str, int]]:
    """The album indexed with the tiny CLIP, its vectors then planted: unrelated images at cosine ~0, copies at
    their original's vector (the resized ones with a little noise), the burst as in burst_vectors.
    Returns (root, settings, {relpath: id})."""
    root = tmp_path_factory.mktemp("album")
    write_album(root)
    settings = Settings(store=root.parent / f"{root.name}-store", model=str(clip_dir), device="cpu", workers=1)
    index_folder(root, settings, show_progress=False)
    return root, settings, plant(root, settings)


def plant(root: Path, settings: Settings) -> dict[str, int]:
    """Plant the vectors described in `album` into an indexed album's store; {relpath: id}."""
    store = open_store(settings.store)
    with store.session() as s:
        ids = dict(s.execute(select(Image.relpath, Image.id)).all())
    rng = np.random.default_rng(3)
    vectors = {relpath: unit(rng.standard_normal(store.dim)) for relpath in sorted(ids)}
    for relpath in ids:
        if relpath.startswith(("copies/img00", "resized/")):
            original = vectors[f"distinct/{relpath.split('/')[1][:5]}.jpg"]
            noise = 0 if relpath.startswith("copies/") else 0.05
            vectors[relpath] = unit(original + noise * unit(rng.standard_normal(store.dim)))
    vectors |= burst_vectors(store.dim, rng)
    with store.session() as s:
        store.write_vectors(s, np.array(list(ids.values())), np.stack([vectors[r] for r in ids]))
        s.commit()
    return ids


def groups_of(found) -> list[tuple[str, list[str]]]:
    """(kind, member relpaths, keeper first) of each group."""
    return [(g.kind, ["/".join(Path(m.path).parts[-2:]) for m in g.members]) for g in found]


def test_each_kind_is_found_without_chaining_with_its_keeper(album):
    root, settings, ids = album
    store = open_store(settings.store)
    found = find_duplicates(store, DuplicateOptions())
    assert groups_of(found) == [
        (EXACT, written_first(root, COPIES, ids)),  # one content: the original keeps, written before its copies
        (SAME, ["distinct/img01.jpg", "resized/img01 small.jpg", "resized/img01 tiny.jpg"]),  # largest first
        (SAME, ["distinct/img02.jpg", "resized/img02 edited.jpg"]),
        # shot4 is within 0.95 of shot3 only, and shot3 went to shot2; shot5 was taken an hour later
        (SIMILAR, ["burst/shot2.jpg", "burst/shot1.jpg", "burst/shot3.jpg"]),
    ]  # fmt: skip
    exact, same, _, similar = found
    assert [m.distance for m in exact.members] == [0, 0, 0] and exact.reclaimable == 2 * exact.keeper.bytes
    assert same.keeper.width == 640 and [m.distance for m in same.members] == [0, 0, 0]  # pHash ignores size
    assert (similar.keeper.width, similar.keeper.height) == (800, 600)
    assert [round(m.similarity, 2) for m in similar.members] == [1.0, 0.97, 0.97]
    assert similar.keeper.taken_at.isoformat() == "2024-05-01T12:00:02"


def written_first(root, relpaths: list[str], ids: dict[str, int]) -> list[str]:
    order = sorted(relpaths, key=lambda rel: ((root / rel).stat().st_mtime_ns, ids[rel]))
    assert order[0] == "distinct/img00.jpg"  # the original, copied after it was written
    return order


def test_kinds_and_thresholds_are_chosen(album, monkeypatch):
    root, settings, ids = album
    store = open_store(settings.store)
    similar_only = find_duplicates(store, DuplicateOptions(kinds=(SIMILAR,)))
    assert [kind for kind, _ in groups_of(similar_only)] == [SIMILAR] * 4  # the copies are similar shots too
    assert ["burst/shot2.jpg", "burst/shot1.jpg", "burst/shot3.jpg"] in [m for _, m in groups_of(similar_only)]
    wide = find_duplicates(store, DuplicateOptions(kinds=(SIMILAR,), window=7200, folder=str(root / "burst")))
    assert groups_of(wide) == [(SIMILAR, ["burst/shot2.jpg", "burst/shot1.jpg", "burst/shot3.jpg", "burst/shot5.jpg"])]
    loose = find_duplicates(store, DuplicateOptions(kinds=(SIMILAR,), similarity=0.85, folder=str(root / "burst")))
    assert groups_of(loose) == [(SIMILAR, ["burst/shot2.jpg", "burst/shot1.jpg", "burst/shot3.jpg", "burst/shot4.jpg"])]
    strict = find_duplicates(store, DuplicateOptions(kinds=(SAME,), distance=1))  # the edited copy is 2 bits off
    assert [m for _, m in groups_of(strict)] == [written_first(root, COPIES, ids), [
        "distinct/img01.jpg", "resized/img01 small.jpg", "resized/img01 tiny.jpg"]]  # fmt: skip
    monkeypatch.setattr(search.duplicates, "EXACT_LIMIT", 10)  # the IVF path finds the same
    assert groups_of(find_duplicates(store, DuplicateOptions())) == groups_of(
        find_duplicates(store, DuplicateOptions())
    )
    assert find_duplicates(store, DuplicateOptions(folder="/elsewhere")) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(kinds=()), "give at least one duplicate kind"),
        (dict(distance=40), "distance must be pHash bits from 0 to 32"),
        (dict(similarity=1.5), "similarity must be a cosine between 0.5 and 1.0"),
        (dict(window=-1), "window must be from 0"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(BadInputError, match=message):
        DuplicateOptions(**options)


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_a_store_made_before_phashes_gets_the_column_and_its_images_are_no_candidates(backend, tmp_path, request):
    location = str(tmp_path / "store") if backend == "embedded" else request.getfixturevalue("pg_url")
    store = plant_vectors(location, unit(np.ones((3, 8)) + np.eye(3, 8)))
    with store.engine.begin() as conn:  # the store as the clipdex before this change made it
        conn.execute(text("ALTER TABLE images DROP COLUMN phash"))
        conn.execute(text("DROP TABLE trashed_files"))
    store.engine.dispose()
    reopened = open_store(location)
    with reopened.session() as s:
        assert s.scalars(select(Image.phash)).all() == [None, None, None]
        s.execute(text("UPDATE images SET hash = 'same'"))
        s.commit()
    groups = find_duplicates(reopened, DuplicateOptions(kinds=(EXACT, SAME)))
    assert [(g.kind, [m.id for m in g.members]) for g in groups] == [(EXACT, [1, 2, 3])]
    assert find_duplicates(reopened, DuplicateOptions(kinds=(SAME,))) == []  # no pHash: no candidate
    reopened.engine.dispose()


def test_the_phash_is_computed_once_at_indexing_and_copied_with_reused_content(album):
    root, settings, ids = album
    store = open_store(settings.store)
    with store.session() as s:
        phashes = dict(s.execute(select(Image.relpath, Image.phash)).all())
    assert all(len(h) == 16 for h in phashes.values())
    assert phashes["copies/img00 copy.jpg"] == phashes["distinct/img00.jpg"]
    data = io.BytesIO()
    photo(7, (640, 480)).save(data, "PNG")
    assert search.duplicates.phash_distance(perceptual_hash(PILImage.open(data).convert("RGB")),
                                            phashes["distinct/img07.jpg"]) <= 2  # fmt: skip


def test_cli_lists_groups_with_their_kind_and_writes_json_and_csv(album, tmp_path):
    root, settings, ids = album
    runner = CliRunner()
    listed = runner.invoke(app, ["duplicates", "--store", str(settings.store)])
    assert listed.exit_code == 0, listed.output
    assert "group 1: 3 exact copies" in listed.stdout and "group 2: 3 copies of one picture" in listed.stdout
    assert "group 4: 3 similar shots" in listed.stdout and "4 groups, 11 images" in listed.stdout
    table = tmp_path / "groups.csv"
    args = ["duplicates", "--store", str(settings.store), "--kind", "similar", "--window", "7200", "--json"]
    result = runner.invoke(app, [*args, "--folder", str(root / "burst"), "--csv", str(table)])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert [g["kind"] for g in groups] == ["similar"] and len(groups[0]["members"]) == 4
    rows = list(csv.DictReader(table.open()))
    assert [(r["group"], r["kind"], r["keep"]) for r in rows[:2]] == [("1", "similar", "1"), ("1", "similar", "0")]
    assert rows[0]["path"] == str(root / "burst/shot2.jpg") and len(rows) == 4
    bad = runner.invoke(app, ["duplicates", "--store", str(settings.store), "--similarity", "0.2"])
    assert bad.exit_code == 2 and "similarity must be a cosine" in bad.output
    bad_kind = runner.invoke(app, ["duplicates", "--store", str(settings.store), "--kind", "twins"])
    assert bad_kind.exit_code == 2


def test_api_pages_through_groups_with_their_kind_and_refuses_bad_options(album):
    root, settings, ids = album
    with TestClient(create_app(settings.model_copy(update={"device": "cpu"}))) as client:
        first = client.get("/api/duplicates", params={"limit": 2}).json()
        assert first["total"] == 4 and [g["kind"] for g in first["groups"]] == ["exact", "same-picture"]
        keeper = first["groups"][1]["members"][0]
        assert keeper["thumbnail_url"] == f"/api/images/{keeper['id']}/thumbnail" and keeper["similarity"] == 1.0
        second = client.get("/api/duplicates", params={"limit": 2, "offset": 2}).json()
        assert [g["kind"] for g in second["groups"]] == ["same-picture", "similar"]
        only = client.get("/api/duplicates", params={"kind": ["similar"], "window": 7200}).json()
        assert [len(g["members"]) for g in only["groups"]] == [4, 3, 3, 2]
        for params in ({"similarity": 2}, {"distance": 33}, {"kind": "twins"}, {"window": -5}):
            refused = client.get("/api/duplicates", params=params)
            assert refused.status_code == 422, params


@pytest.fixture
def small_album(tmp_path, clip_dir, request) -> tuple[Path, Settings]:
    """Four distinct photos, a byte copy of the first and a half-size copy of the second; indexed (into the
    backend a test's `backend` parameter names, else the embedded store)."""
    root = tmp_path / "small album"
    for seed in range(4):
        save(photo(seed, (640, 480)), root / f"img{seed}.jpg")
    (root / "copies").mkdir()
    shutil.copyfile(root / "img0.jpg", root / "copies/img0.jpg")
    save(resized(photo(1, (640, 480)), 0.5), root / "copies/img1 small.jpg", quality=70)
    postgres = getattr(request, "param", "embedded") == "postgres"
    location = request.getfixturevalue("pg_url") if postgres else str(tmp_path / "store")
    settings = Settings(store=location, model=str(clip_dir), device="cpu", workers=1)
    index_folder(root, settings, show_progress=False)
    return root, settings


def stored(settings: Settings) -> set[str]:
    with open_store(settings.store).session() as s:
        return set(s.scalars(select(Image.relpath)))


@pytest.mark.parametrize("small_album", ["embedded", "postgres"], indirect=True)
def test_trash_moves_the_copies_aside_and_restores_them_with_the_store_following(small_album):
    root, settings = small_album
    store = ["--store", str(settings.store)]
    runner = CliRunner()
    groups = json.loads(runner.invoke(app, ["duplicates", *store, "--kind", "exact", "--kind", "same-picture",
                                            "--json"]).stdout)  # fmt: skip
    assert [g["kind"] for g in groups] == ["exact", "same-picture"]
    drop = [m["id"] for g in groups for m in g["members"][1:]]
    assert sorted(Path(m["path"]).name for g in groups for m in g["members"][1:]) == ["img0.jpg", "img1 small.jpg"]
    dropped = {m["path"] for g in groups for m in g["members"][1:]}
    taken = root / ".clipdex-trash/copies/img0.jpg"  # a file already where one goes is never replaced
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"something else")
    before = {path: Path(path).read_bytes() for path in dropped}

    moved = runner.invoke(app, ["trash", "move", *map(str, drop), *store, "--json"])
    assert moved.exit_code == 0, moved.output
    trash = {t["path"]: t["trash_path"] for t in json.loads(moved.stdout)}
    assert set(trash) == dropped and not any(Path(p).exists() for p in dropped)
    assert {Path(p).read_bytes() for p in trash.values()} == set(
        before.values()
    ) and taken.read_bytes() == b"something else"
    assert trash[str(root / "copies/img0.jpg")] == str(root / ".clipdex-trash/copies/img0 (2).jpg")
    assert stored(settings) == {"img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"}  # the store follows
    index_folder(root, settings, show_progress=False)  # the scanner never lists the trash folder
    assert stored(settings) == {"img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"}
    assert runner.invoke(app, ["duplicates", *store, "--kind", "exact"]).stdout.startswith("0 groups")
    listed = runner.invoke(app, ["trash", "list", *store])
    assert listed.exit_code == 0 and "copies/img1 small.jpg" in listed.stdout

    restored = runner.invoke(app, ["trash", "restore", "--all", *store])
    assert restored.exit_code == 0, restored.output
    assert "2 files restored" in restored.stdout and f"clipdex index {root}" in restored.stdout
    assert {path: Path(path).read_bytes() for path in dropped} == before and taken.read_bytes() == b"something else"
    assert runner.invoke(app, ["trash", "list", *store]).stdout.strip() == "the trash is empty"
    index_folder(root, settings, show_progress=False)
    assert stored(settings) == {"img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg", "copies/img0.jpg",
                                "copies/img1 small.jpg"}  # fmt: skip


def test_restore_refuses_to_replace_a_file_and_bad_names_are_errors(small_album):
    root, settings = small_album
    store = ["--store", str(settings.store)]
    runner = CliRunner()
    copy_id = open_store(settings.store).find_path(root / "copies/img0.jpg")
    assert runner.invoke(app, ["trash", "move", str(copy_id), *store]).exit_code == 0
    (root / "copies/img0.jpg").write_bytes(b"a new file in its place")
    refused = runner.invoke(app, ["trash", "restore", str(root / "copies/img0.jpg"), *store])
    assert refused.exit_code == 2 and "is taken by another file. Nothing was restored" in refused.output
    assert (root / ".clipdex-trash/copies/img0.jpg").is_file()
    unknown = runner.invoke(app, ["trash", "move", "9999", *store])
    assert unknown.exit_code == 2 and "no indexed image with id 9999; nothing was moved" in unknown.output
    assert runner.invoke(app, ["trash", "restore", "77", *store]).exit_code == 2
    assert runner.invoke(app, ["trash", "restore", *store]).exit_code == 2  # neither names nor --all
    (root / "copies/img0.jpg").unlink()
    assert runner.invoke(app, ["trash", "restore", "1", *store]).exit_code == 0  # by trash id
    assert (root / "copies/img0.jpg").read_bytes() == (root / "img0.jpg").read_bytes()


def test_api_moves_and_restores_refusing_without_a_key_beyond_loopback(small_album):
    root, settings = small_album
    copy_id = open_store(settings.store).find_path(root / "copies/img0.jpg")
    with TestClient(create_app(settings, host="0.0.0.0")) as client:
        refused = client.post("/api/trash", json={"ids": [copy_id]})
        assert refused.status_code == 403 and "CLIPDEX_API_KEY" in refused.json()["detail"]
        assert client.post("/api/trash/restore", json={"all": True}).status_code == 403
        assert client.get("/api/trash").json() == []  # listing moves nothing
    keyed = settings.model_copy(update={"api_key": "sesame"})
    with TestClient(create_app(keyed, host="0.0.0.0")) as client:
        assert client.post("/api/trash", json={"ids": [copy_id]}).status_code == 401
        moved = client.post("/api/trash", json={"ids": [copy_id]}, headers={"X-API-Key": "sesame"})
        assert moved.status_code == 200, moved.text
        assert [t["path"] for t in moved.json()] == [str(root / "copies/img0.jpg")]
    assert not (root / "copies/img0.jpg").exists() and "copies/img0.jpg" not in stored(settings)
    with TestClient(create_app(settings)) as client:  # loopback: no key needed
        for bad in ({"ids": []}, {"ids": ["x"]}, {"ids": [0]}, {"ids": [2**70]}, {}, {"ids": list(range(1, 1002))}):
            assert client.post("/api/trash", json=bad).status_code == 422, bad
        assert client.post("/api/trash", json={"ids": [copy_id]}).status_code == 404  # gone from the store
        for bad in ({}, {"ids": [1], "all": True}, {"ids": []}):
            assert client.post("/api/trash/restore", json=bad).status_code == 422, bad
        assert client.post("/api/trash/restore", json={"ids": [99]}).status_code == 404
        [held] = client.get("/api/trash").json()
        restored = client.post("/api/trash/restore", json={"ids": [held["id"], held["id"]]})  # named twice: once
        assert restored.status_code == 200 and client.get("/api/trash").json() == []
    assert (root / "copies/img0.jpg").read_bytes() == (root / "img0.jpg").read_bytes()

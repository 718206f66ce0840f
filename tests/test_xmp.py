"""Keywords in and out: XMP and IPTC written by other programs are read at indexing (embedded and in sidecars of
both naming styles), kept up to date without re-embedding, searched and filtered; clipdex's tags and captions
are merged into sidecars that an independent reader (exiftool) reads back."""

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import ANY

import exiv2
from sqlalchemy import select

from indexer.indexing import index_folder
from indexer.store import Caption, Image, Keyword, MetadataRead, Tag, open_store, utcnow
from tests.support.photos import write_photos

SIDECAR = """<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:darktable="http://darktable.sf.net/" darktable:xmp_version="5">
<dc:subject><rdf:Bag>{subjects}</rdf:Bag></dc:subject>
<lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|France|Paris</rdf:li></rdf:Bag></lr:hierarchicalSubject>
</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>"""


def sidecar(path: Path, *subjects: str) -> None:
    path.write_text(SIDECAR.format(subjects="".join(f"<rdf:li>{s}</rdf:li>" for s in subjects)))


def embed(photo: Path, keywords: list[str], title: str, iptc: list[str] = ()) -> None:
    """What a camera app or Lightroom export leaves inside the JPEG."""
    image = exiv2.ImageFactory.open(str(photo))
    image.readMetadata()
    xmp, data = image.xmpData(), image.iptcData()
    bag = exiv2.XmpArrayValue(exiv2.TypeId.xmpBag)
    for keyword in keywords:
        bag.read(keyword)
    xmp.add(exiv2.XmpKey("Xmp.dc.subject"), bag)
    xmp["Xmp.dc.title"] = exiv2.LangAltValue(f'lang="x-default" {title}')
    for keyword in iptc:
        data.add(exiv2.IptcKey("Iptc.Application2.Keywords"), exiv2.StringValue(keyword))
    image.setXmpData(xmp)
    image.setIptcData(data)
    image.writeMetadata()


def keywords_of(store) -> dict[str, list[str]]:
    with store.session() as s:
        rows = s.execute(select(Keyword.image_id, Keyword.keyword).order_by(Keyword.id)).all()
    paths = store.paths(sorted({i for i, _ in rows}))
    found: dict[str, list[str]] = {}
    for image_id, keyword in rows:
        found.setdefault(Path(paths[image_id]).name, []).append(keyword)
    return found


def test_keywords_are_read_from_the_image_and_both_sidecar_styles_and_follow_sidecar_changes(tmp_path, settings):
    photos = tmp_path / "photos"
    a, b, c = write_photos(photos, 3)
    embed(a, ["beach", "Dog"], "Summer at the sea", iptc=["holiday", "dog"])
    sidecar(photos / "img001.jpg.xmp", "harbour", "boats")  # darktable's and digiKam's name
    sidecar(photos / "img002.xmp", "market")  # Lightroom's
    first = index_folder(photos, settings, show_progress=False)
    assert first.metadata.read == 3 and "metadata read from 3 images (3 with" in first.line()
    store = open_store(settings.store)
    assert keywords_of(store) == {
        "img000.jpg": ["beach", "Dog", "holiday"],  # IPTC's "dog" is Dog again, whatever its case
        "img001.jpg": ["harbour", "boats", "Paris"],  # the last level of Places|France|Paris
        "img002.jpg": ["market", "Paris"],
    }
    with store.session() as s:
        titles = s.execute(select(Image.relpath, MetadataRead.title).join(MetadataRead)).all()
    assert sorted(titles) == [("img000.jpg", "Summer at the sea"), ("img001.jpg", None), ("img002.jpg", None)]

    unchanged = index_folder(photos, settings, show_progress=False)
    assert unchanged.metadata.read == 0 and "metadata" not in unchanged.line()

    sidecar(photos / "img002.xmp", "market", "fish")  # another program adds a keyword
    os.utime(photos / "img002.xmp", ns=(1, 2_000_000_000_000_000_000))
    (photos / "img001.jpg.xmp").unlink()
    again = index_folder(photos, settings, show_progress=False)
    assert (again.indexed, again.unchanged, again.metadata.read) == (0, 3, 2)  # nothing embedded again
    assert keywords_of(store)["img002.jpg"] == ["market", "fish", "Paris"] and "img001.jpg" not in keywords_of(store)


def test_damaged_metadata_never_stops_indexing(tmp_path, settings):
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    (photos / "img000.jpg.xmp").write_text("<x:xmpmeta this is not XML")
    (photos / "img001.xmp").write_bytes(os.urandom(300))
    sidecar(photos / "img001.jpg.xmp", "huge")
    with open(photos / "img001.jpg.xmp", "a") as f:  # past the size a sidecar may have: not read
        f.write(" " * 5 * 2**20)
    summary = index_folder(photos, settings, show_progress=False)
    assert summary.indexed == 2 and summary.metadata.read == 2 and keywords_of(open_store(settings.store)) == {}


def exiftool(*args) -> dict:
    """An independent reader: Phil Harvey's exiftool (Debian's libimage-exiftool-perl, which CI installs)."""
    done = subprocess.run(["exiftool", "-j", "-struct", *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)[0]


def plant_tags_and_captions(store, tags: dict[str, list[tuple[str, str]]], captions: dict[str, str], model="blip"):
    """Tags and captions as `clipdex tag` and `clipdex caption` leave them, by file name."""
    with store.session() as s:
        ids = {Path(relpath).name: i for i, relpath in s.execute(select(Image.id, Image.relpath))}
        for name, labels in tags.items():
            s.add_all(Tag(image_id=ids[name], label_set=ls, label=label, score=0.9, model="m") for ls, label in labels)
        for name, caption in captions.items():
            s.add(Caption(image_id=ids[name], model=model, text=caption, created_at=utcnow()))
        s.commit()


def test_tags_and_captions_merge_into_sidecars_that_exiftool_reads(tmp_path, settings):
    from indexer.enrich.keywords import write_sidecars

    photos = tmp_path / "photos"
    a, b = write_photos(photos, 2)
    (photos / "img000.xmp").write_text(
        SIDECAR.format(subjects="<rdf:li>Paris</rdf:li>").replace(
            "</dc:subject>", '</dc:subject><dc:description><rdf:Alt><rdf:li xml:lang="x-default">Our trip'
            "</rdf:li></rdf:Alt></dc:description>"
        )
    )  # fmt: skip
    index_folder(photos, settings, show_progress=False)
    store = open_store(settings.store)
    plant_tags_and_captions(
        store, {"img000.jpg": [("kind", "dog")], "img001.jpg": [("kind", "cat"), ("mood", "calm")]},
        {"img000.jpg": "a dog", "img001.jpg": "a cat on a sofa"},
    )  # fmt: skip
    images = {path: path.read_bytes() for path in (a, b)}
    before = (photos / "img000.xmp").read_bytes()

    dry = write_sidecars(store, dry_run=True)
    assert (dry.written, dry.unchanged) == (2, 0) and dry.line().startswith("would write 2 sidecars")
    assert (photos / "img000.xmp").read_bytes() == before and not (photos / "img001.jpg.xmp").exists()

    assert write_sidecars(store).line() == "wrote 2 sidecars, 0 already up to date"
    theirs = exiftool(photos / "img000.xmp")
    assert theirs["Subject"] == ["Paris", "dog"]
    assert theirs["HierarchicalSubject"] == ["Places|France|Paris", "clipdex|kind|dog"]
    assert theirs["Description"] == "Our trip" and theirs["Xmp_version"] == 5  # another program's fields stay
    ours = exiftool(photos / "img001.jpg.xmp")  # made in the darktable / digiKam style
    assert ours["Subject"] == ["cat", "calm"] and ours["Description"] == "a cat on a sofa"
    assert ours["HierarchicalSubject"] == ["clipdex|kind|cat", "clipdex|mood|calm"]
    assert all(path.read_bytes() == data for path, data in images.items())  # images never touched
    assert sorted(p.name for p in photos.iterdir()) == ["img000.jpg", "img000.xmp", "img001.jpg", "img001.jpg.xmp"]

    stamps = {p: p.stat().st_mtime_ns for p in photos.glob("*.xmp")}
    again = write_sidecars(store)
    assert (again.written, again.unchanged) == (0, 2)  # idempotent
    assert {p: p.stat().st_mtime_ns for p in photos.glob("*.xmp")} == stamps

    plant_tags_and_captions(store, {}, {"img001.jpg": "a cat asleep"}, "blip2")  # newer: it replaces clipdex's own
    assert write_sidecars(store, tags=False).written == 1
    assert exiftool(photos / "img001.jpg.xmp")["Description"] == "a cat asleep"
    assert index_folder(photos, settings, show_progress=False).metadata.read == 2  # read back as keywords
    assert keywords_of(store)["img001.jpg"] == ["cat", "calm"]


def test_an_unwritable_folder_is_reported_and_skipped(tmp_path, settings):
    from indexer.enrich.keywords import write_sidecars

    photos = tmp_path / "photos"
    write_photos(photos / "locked", 2)
    write_photos(photos / "open", 1, start=5)
    index_folder(photos, settings, show_progress=False)
    store = open_store(settings.store)
    plant_tags_and_captions(store, {n: [("kind", "dog")] for n in ("img000.jpg", "img001.jpg", "img005.jpg")}, {})
    with unwritable(photos / "locked"):
        summary = write_sidecars(store)
    assert summary.written == 1 and summary.failed == {str(photos / "locked"): ANY}
    assert "cannot be written" in summary.failed[str(photos / "locked")]
    assert sorted(p.name for p in (photos / "locked").iterdir()) == ["img000.jpg", "img001.jpg"]


@contextmanager
def unwritable(folder: Path):
    """A folder nobody may write, root included (who ignores its mode): read-only and, as root, immutable."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_keywords_names_and_sidecars_from_the_command_line_and_the_api(tmp_path, settings):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from search.api import create_app
    from search.cli import app

    photos = tmp_path / "photos"
    write_photos(photos / "Paris 2019", 2)
    write_photos(photos / "home", 2, start=2)
    sidecar(photos / "home/img002.jpg.xmp", "Eiffel")
    runner = CliRunner()
    store = ["--store", str(settings.store)]

    def search(*args) -> list[str]:
        done = runner.invoke(app, ["search", *args, "--json", "-k", "10", *store])
        assert done.exit_code == 0, done.output
        return [str(Path(hit["path"]).relative_to(photos)) for hit in json.loads(done.stdout)]

    assert runner.invoke(app, ["index", str(photos), "--model", settings.model, *store]).exit_code == 0
    assert search("eiffel", "--mode", "keyword") == ["home/img002.jpg"]
    assert search("a photo", "--keyword", " EIFFEL") == ["home/img002.jpg"]
    assert sorted(search("paris 2019", "--mode", "name")) == ["Paris 2019/img000.jpg", "Paris 2019/img001.jpg"]
    # Hybrid: the folder's name, and img002's keyword Paris (from Places|France|Paris), lift them over img003.
    assert search("paris")[3:] == ["home/img003.jpg"]
    assert search("img") == search("img", "--mode", "embedding")  # in every name: it changes no order
    bad = runner.invoke(app, ["search", "paris", "--mode", "name", "--min-score", "0.2", *store])
    assert bad.exit_code == 2 and "min_score is a cosine" in bad.output

    assert runner.invoke(app, ["tag", "--labels", "cat,dog", "--top-k", "1", *store]).exit_code == 0
    dry = runner.invoke(app, ["xmp", "write", "--dry-run", "--json", *store])
    assert json.loads(dry.stdout)["written"] == 4 and not list(photos.rglob("*.jpg.xmp"))[1:]
    done = runner.invoke(app, ["xmp", "write", "--tags", *store])
    assert done.exit_code == 0 and "wrote 4 sidecars, 0 already up to date" in done.output
    assert exiftool(photos / "home/img002.jpg.xmp")["Subject"][0] == "Eiffel"  # theirs first, then clipdex's
    ours = {exiftool(p)["HierarchicalSubject"][-1] for p in photos.rglob("*.xmp")}
    assert ours <= {"clipdex|default|cat", "clipdex|default|dog"}  # under the label set's name

    with TestClient(create_app(settings)) as client:
        again = client.post("/api/xmp/sidecars", json={"dry_run": True})
        assert again.status_code == 200 and again.json() == {
            "written": 0,
            "unchanged": 4,
            "failed": {},
            "dry_run": True,
        }
        assert client.post("/api/xmp/sidecars", json={"tags": "many"}).status_code == 422
        nothing = client.post("/api/xmp/sidecars", json={"tags": False, "captions": False})
        assert nothing.status_code == 422 and "nothing to write" in nothing.json()["detail"]
        found = client.get("/api/search", params={"q": "x", "keyword": "eiffel"}).json()["hits"]
        assert [hit["path"] for hit in found] == [str(photos / "home/img002.jpg")]
        shown = client.get(f"/api/images/{found[0]['id']}").json()  # the photo view
        assert shown["keywords"] == ["Eiffel", "Paris"] and shown["title"] is None
    with TestClient(create_app(settings, host="0.0.0.0")) as client:
        refused = client.post("/api/xmp/sidecars", json={})
        assert refused.status_code == 403 and "writing sidecars need an API key" in refused.json()["detail"]

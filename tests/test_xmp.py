"""Keywords in and out: XMP and IPTC written by other programs are read at indexing (embedded and in sidecars of
both naming styles), kept up to date without re-embedding, searched and filtered; clipdex's tags and captions
are merged into sidecars that an independent reader (exiftool) reads back."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import exiv2
import pytest
from sqlalchemy import select

from indexer.indexing import index_folder
from indexer.store import Image, Keyword, MetadataRead, open_store
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
    summary = index_folder(photos, settings, show_progress=False)
    assert summary.indexed == 2 and summary.metadata.read == 2 and keywords_of(open_store(settings.store)) == {}

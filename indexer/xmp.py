"""XMP in and out: the keywords, title and description other photo programs gave an image, read from the image
(XMP, IPTC) and its sidecars; clipdex's tags and captions merged into a sidecar those programs read.

Through python-exiv2, the binding of the exiv2 library (what digiKam reads and writes metadata with). Sidecars
come in two naming styles: `photo.jpg.xmp` (darktable, digiKam) and `photo.xmp` (Lightroom, Capture One). clipdex
reads both and writes the first, which cannot be shared by `photo.jpg` and `photo.nef` side by side.

Writing never touches an image file and never drops a field: dc:subject only gains clipdex's labels,
lr:hierarchicalSubject's entries under the `clipdex|` root are replaced and the others kept, and dc:description is
written only when it is empty or still the caption clipdex wrote there (recorded as clipdex:description).
"""

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import exiv2

from indexer.scan import SIDECAR_SUFFIX

log = logging.getLogger(__name__)
exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.mute)  # exiv2 prints its warnings about odd files to stderr otherwise

ROOT = "clipdex"  # the lr:hierarchicalSubject root of clipdex's labels: clipdex|<label set>|<label>
NAMESPACE = "http://clipdex.org/xmp/1.0/"
exiv2.XmpProperties.registerNs(NAMESPACE, ROOT)
SUBJECT, HIERARCHY = "Xmp.dc.subject", "Xmp.lr.hierarchicalSubject"
TITLE, DESCRIPTION, WRITTEN = "Xmp.dc.title", "Xmp.dc.description", "Xmp.clipdex.description"
EMPTY_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta><?xpacket end="w"?>'
)
IPTC_KEYWORDS, IPTC_TITLE, IPTC_DESCRIPTION = (
    "Iptc.Application2.Keywords",
    "Iptc.Application2.ObjectName",
    "Iptc.Application2.Caption",
)


def sidecar_paths(relpath: str) -> list[str]:
    """An image's sidecars in both naming styles, relative like the image: photo.jpg.xmp, then photo.xmp (one name
    for a file without an extension)."""
    return list(dict.fromkeys([relpath + SIDECAR_SUFFIX, str(PurePosixPath(relpath).with_suffix(SIDECAR_SUFFIX))]))


@dataclass
class PhotoMetadata:
    """What other programs wrote about a photo."""

    keywords: list[str] = field(default_factory=list)  # flat keywords and the last level of hierarchical ones
    title: str | None = None
    description: str | None = None

    def text(self) -> str:
        """Everything as one searchable text: title, description, keywords."""
        return "\n".join(part for part in (self.title, self.description, ", ".join(self.keywords)) if part)


def read_metadata(files: list[Path]) -> PhotoMetadata:
    """The metadata of an image and its sidecars, in that order: keywords united, the title and description of
    the last file that has them (a sidecar overrides what is embedded, as the programs that write it expect).

    A file exiv2 cannot read adds nothing (a damaged image is still indexed; its metadata is just missing)."""
    found = PhotoMetadata()
    for path in files:
        try:
            image = exiv2.ImageFactory.open(str(path))
            image.readMetadata()
        except exiv2.Exiv2Error as e:
            log.debug("no metadata read from %s: %s", path, e)
            continue
        xmp, iptc = image.xmpData(), image.iptcData()
        hierarchical = [entry.split("|")[-1] for entry in values(xmp, HIERARCHY)]
        for keyword in values(xmp, SUBJECT) + hierarchical + values(iptc, IPTC_KEYWORDS):
            if keyword.strip() and keyword.strip() not in found.keywords:
                found.keywords.append(keyword.strip())
        found.title = first(xmp, TITLE) or first(iptc, IPTC_TITLE) or found.title
        found.description = first(xmp, DESCRIPTION) or first(iptc, IPTC_DESCRIPTION) or found.description
    return found


def values(data, key: str) -> list[str]:
    """Every value of a key (the items of an XMP array, the repeats of an IPTC dataset)."""
    return [datum.toString(i) for datum in data if datum.key() == key for i in range(datum.count())]


def first(data, key: str) -> str | None:
    """The first value of a key (for a language alternative, its default language), or None when empty."""
    found = [v.strip() for v in values(data, key)[:1] if v.strip()]
    return found[0] if found else None


def merge_sidecar(
    image: Path, labels: list[tuple[str, str]] | None, caption: str | None, dry_run: bool = False
) -> bool:
    """Merge clipdex's labels ((label set, label) pairs; None leaves the keywords alone) and caption (None: the
    description) into the image's sidecar, made if it has none; whether it changed (with dry_run, would). The
    file is replaced whole by rename: a reader, or
    a crash, sees the old sidecar or the new one. OSError (PermissionError for a folder that refuses it) or
    exiv2.Exiv2Error when it cannot be written."""
    candidates = [image.parent / name for name in sidecar_paths(image.name)]
    existing = next((path for path in candidates if path.is_file()), None)
    sidecar = existing or candidates[0]
    xmp = exiv2.XmpData()
    if existing:
        current = exiv2.ImageFactory.open(str(existing))
        current.readMetadata()
        xmp = current.xmpData()
    subjects, hierarchy = values(xmp, SUBJECT), values(xmp, HIERARCHY)
    new_subjects, new_hierarchy = subjects, hierarchy
    if labels is not None:
        new_subjects = subjects + [
            label for label in dict.fromkeys(label for _, label in labels) if label not in subjects
        ]
        ours = [f"{ROOT}|{label_set}|{label}" for label_set, label in labels]
        new_hierarchy = [entry for entry in hierarchy if entry.split("|")[0] != ROOT] + ours
    description, written = first(xmp, DESCRIPTION), first(xmp, WRITTEN)
    new_description = caption if caption and (description is None or description == written) else description
    if (new_subjects, new_hierarchy, new_description) == (subjects, hierarchy, description):
        return False
    if dry_run:
        return True
    set_bag(xmp, SUBJECT, new_subjects)
    set_bag(xmp, HIERARCHY, new_hierarchy)
    if new_description != description:
        xmp[DESCRIPTION] = exiv2.LangAltValue(f'lang="x-default" {new_description}')
        xmp[WRITTEN] = new_description
    staging = sidecar.with_name(f".{sidecar.name}.clipdex-new")
    try:
        if existing:
            shutil.copy2(existing, staging)  # keeps what exiv2 does not parse, and the file's mode
        else:
            staging.write_text(EMPTY_PACKET)
        out = exiv2.ImageFactory.open(str(staging))
        out.setXmpData(xmp)
        out.writeMetadata()
        os.replace(staging, sidecar)
    finally:
        staging.unlink(missing_ok=True)
    return True


def set_bag(xmp, key: str, items: list[str]) -> None:
    """An unordered XMP array (rdf:Bag), as dc:subject and lr:hierarchicalSubject are defined."""
    found = xmp.findKey(exiv2.XmpKey(key))
    if found != xmp.end():
        xmp.erase(found)
    if items:
        bag = exiv2.XmpArrayValue(exiv2.TypeId.xmpBag)
        for item in items:
            bag.read(item)
        xmp.add(exiv2.XmpKey(key), bag)

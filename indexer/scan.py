"""Find image and video files under a folder and sort them against the store: new, changed, unchanged, deleted.

The decision uses file stats alone (size + mtime), so an unchanged re-run reads no file content. A Live Photo's
movie (a short video named as a still beside it) is not an item of its own: it is the still's motion.

The files and the store's rows are compared as two streams sorted by relative path (`changes`), so neither side is
ever held as a whole in a dictionary: the Ray runner streams a manifest of millions of files through it.
"""

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.decode import RAW_SUFFIXES, looks_like_image
from indexer.video import VIDEO_SUFFIXES, looks_like_video

log = logging.getLogger(__name__)

# Every still-image extension Pillow and pillow-heif open (Image.registered_extensions() with an opener;
# tests/test_formats.py keeps this in step), plus MPO, which Pillow reads through its JPEG plugin. A file
# with one of these names gets a row, indexed or skipped with its reason; other names are sniffed.
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib",
    ".tif", ".tiff", ".heic", ".heics", ".heif", ".heifs", ".hif", ".avif", ".avifs",
    ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx", ".tga", ".icb", ".vda", ".vst", ".dds", ".psd",
    ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".ico", ".cur", ".icns", ".sgi", ".rgb", ".rgba", ".bw",
    ".pcx", ".dcx", ".qoi", ".blp", ".xbm", ".xpm", ".im", ".msp", ".ras", ".pcd", ".pxr", ".iim",
    ".ftc", ".ftu", ".gbr", ".fli", ".flc", ".fit", ".fits",
} | RAW_SUFFIXES  # fmt: skip
# Extensions Pillow registers that clipdex leaves alone: PostScript needs Ghostscript (an external
# process per file), the stub plugins (BUFR, GRIB, HDF5, WMF/EMF) identify files they cannot decode, and
# MPEG only identifies video (PyAV reads videos: VIDEO_SUFFIXES).
PILLOW_EXTENSIONS_LEFT_OUT = {".eps", ".ps", ".bufr", ".grib", ".h5", ".hdf", ".emf", ".wmf", ".mpeg", ".mpg"}
SIDECAR_SUFFIX = ".xmp"  # metadata beside an image (indexer/xmp.py), read by the keywords pass
# Never images or videos: skip without opening them, so big other folders scan fast.
NOT_MEDIA_SUFFIXES = {
    ".txt", ".md", ".json", ".xml", ".xmp", ".csv", ".html", ".pdf", ".db", ".sqlite", ".py",
    ".mp3", ".wav", ".m4a", ".aac", ".flac", ".zip", ".gz", ".tar", ".faiss", ".log",
}  # fmt: skip
# A movie with one of these names beside a still of the same name is the still's Live Photo motion (Apple writes
# IMG_0001.HEIC + IMG_0001.MOV; Google's Motion Photos embed theirs in the JPEG and are just stills here).
MOTION_SUFFIXES = {".mov", ".mp4"}


@dataclass(frozen=True)
class FileStat:
    relpath: str  # POSIX-style, relative to the root
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class StoredFile:
    """What the store knows of a file under the root."""

    id: int
    relpath: str
    size: int
    mtime_ns: int
    retry: bool  # skipped for a reason that can heal with the file unchanged (a permission): tried again


@dataclass
class ScanResult:
    """Files under a root against what the store knows about that root."""

    new: list[FileStat] = field(default_factory=list)
    changed: list[tuple[int, FileStat]] = field(default_factory=list)  # (image id, new stats)
    unchanged: int = 0
    deleted: list[int] = field(default_factory=list)  # image ids whose file is gone
    unreadable_dirs: list[str] = field(default_factory=list)
    sidecars: dict[str, str] = field(default_factory=dict)  # XMP sidecars: relpath -> "size:mtime_ns"
    motions: dict[str, str] = field(default_factory=dict)  # Live Photos: the still's relpath -> its movie's


def walk_images(
    root: Path,
    unreadable: list[str] | None = None,
    sidecars: dict[str, str] | None = None,
    motions: dict[str, str] | None = None,
    top: Path | None = None,
    folders: list[Path] | None = None,
    seen: set[tuple[int, int]] | None = None,
):
    """Yield FileStat for every image and video file under root, following symlinks without looping; the XMP
    sidecars seen on the way go into `sidecars` (relpath -> "size:mtime_ns"), the Live Photo movies into `motions`
    (the still's relpath -> the movie's) instead of being yielded.

    `top` walks only that folder under root (paths stay relative to root); with `folders`, its subfolders are put
    there instead of walked (the Ray runner cuts a tree into folders that tasks list); `seen` holds the (device,
    inode) of folders listed already, not walked again.
    """
    seen_dirs = set() if seen is None else seen
    stack = [top or root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:  # a symlink loop or a second link to a folder already walked
                continue
            seen_dirs.add(key)
            entries = list(os.scandir(folder))
        except OSError as e:
            log.warning("skipping folder %s: %s", folder, e.strerror or e)
            if unreadable is not None:
                unreadable.append(str(folder))
            continue
        movies = live_photo_movies(entries)
        for entry in sorted(entries, key=lambda e: e.name, reverse=True):
            if entry.name in movies:
                if motions is not None:
                    still = Path(entry.path).with_name(movies[entry.name])
                    motions[still.relative_to(root).as_posix()] = Path(entry.path).relative_to(root).as_posix()
                continue
            try:
                if entry.is_dir():
                    if not entry.name.startswith("."):
                        (stack if folders is None else folders).append(Path(entry.path))
                    continue
                sidecar = entry.name.lower().endswith(SIDECAR_SUFFIX) and sidecars is not None
                if not entry.is_file() or not (sidecar or is_candidate(entry)):
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished or dangling symlink
            relpath = Path(entry.path).relative_to(root).as_posix()
            if sidecar:
                sidecars[relpath] = f"{st.st_size}:{st.st_mtime_ns}"
                continue
            yield FileStat(relpath=relpath, size=st.st_size, mtime_ns=st.st_mtime_ns)


def live_photo_movies(entries: list[os.DirEntry]) -> dict[str, str]:
    """{movie name: still name} for the Live Photo movies among a folder's entries: a MOTION_SUFFIXES file whose
    name, but for the extension and its case, is an image's beside it."""
    stills = {}
    for entry in entries:
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in IMAGE_SUFFIXES:
            stills.setdefault(stem.lower(), entry.name)
    movies = {}
    for entry in entries:
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in MOTION_SUFFIXES and stem.lower() in stills:
            movies[entry.name] = stills[stem.lower()]
    return movies


def is_candidate(entry: os.DirEntry) -> bool:
    """Image or video by name, or, for names that do not say, by the file's first bytes."""
    suffix = os.path.splitext(entry.name)[1].lower()
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        return True
    if suffix in NOT_MEDIA_SUFFIXES or entry.name.startswith("."):
        return False
    try:
        with open(entry.path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return looks_like_image(head) or looks_like_video(head)


def diff_against_store(root: Path, stored: Iterable[StoredFile]) -> ScanResult:
    """Compare the files under root with the store's rows of that root, `stored` in relpath order (byte order)."""
    result = ScanResult()
    files = sorted(walk_images(root, result.unreadable_dirs, result.sidecars, result.motions), key=by_relpath)
    for kind, stat, image_id in changes(files, stored, hidden_prefixes(root, result.unreadable_dirs)):
        if kind == "new":
            result.new.append(stat)
        elif kind == "changed":
            result.changed.append((image_id, stat))
        elif kind == "deleted":
            result.deleted.append(image_id)
        else:
            result.unchanged += 1
    return result


def by_relpath(stat: FileStat) -> str:
    return stat.relpath


def hidden_prefixes(root: Path, unreadable_dirs: Iterable[str]) -> tuple[str, ...]:
    """Relpath prefixes of the folders that could not be listed: their files are not known to be gone ("" when the
    root itself could not be listed)."""
    return tuple("" if Path(d) == root else Path(d).relative_to(root).as_posix() + "/" for d in unreadable_dirs)


def changes(
    files: Iterable[FileStat], stored: Iterable[StoredFile], hidden: tuple[str, ...] = ()
) -> Iterator[tuple[str, FileStat | None, int | None]]:
    """Merge the files found and the stored rows, both sorted by relpath, into ("new", stat, None), ("changed", stat,
    id), ("unchanged", stat, id) and ("deleted", None, id); a stored row under a `hidden` prefix is kept.

    A row is changed when its size or mtime differ, or it was skipped for a reason that can heal. Out-of-order
    input is an error, never a guess: a wrong merge would delete rows whose files are there.
    """
    files, stored = iter(files), iter(stored)
    stat, row = next(files, None), next(stored, None)
    last_file = last_row = ""
    while stat is not None or row is not None:
        if stat is not None and stat.relpath < last_file or row is not None and row.relpath < last_row:
            raise RuntimeError(f"unsorted input to the scan's merge near {stat or row}")
        if row is None or (stat is not None and stat.relpath < row.relpath):
            yield "new", stat, None
            last_file, stat = stat.relpath, next(files, None)
        elif stat is None or row.relpath < stat.relpath:
            if not row.relpath.startswith(hidden):
                yield "deleted", None, row.id
            last_row, row = row.relpath, next(stored, None)
        else:
            same = (row.size, row.mtime_ns) == (stat.size, stat.mtime_ns) and not row.retry
            yield "unchanged" if same else "changed", stat, row.id
            last_file, last_row = stat.relpath, row.relpath
            stat, row = next(files, None), next(stored, None)

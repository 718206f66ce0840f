"""`clipdex store import` / `export`: embeddings in clip-retrieval's layout, so LAION-style collections and clipdex
stores move both ways.

The layout (what `clip-retrieval inference` writes, and autofaiss and `clip-retrieval index` read): a folder with
`img_emb/img_emb_N.npy` ((n, dim) float16 or float32, L2-normalised rows) and `metadata/metadata_N.parquet`, one
row per embedding in the same order: `image_path` (a local file; for webdataset inputs the sample's key), `url`
(web collections), `caption`, and whatever else the collection carried (width, height, exif...). Shard N of one
matches shard N of the other. clipdex's export adds `clipdex.json` (model and dim) beside them.

Import: a row with a `url` is a web image, stored under a root named by the URL's scheme and host with the URL's
path as its path: searchable, not servable. Any other row's `image_path` is a file, stored under one root for the
whole import: `--root` when passed (relative paths are taken from there), else the common folder of every
`image_path` (relative ones taken from the current directory), or a folder the store already has that holds it.
A file that exists gets its size and modification time, so a later `clipdex index` of that root finds it
unchanged and does not embed it again; one that does not exist gets 0 for both, and is embedded anew should it
appear there. A caption becomes a caption of model "import:clip-retrieval", searched like any other. Chunks are
committed one at a time and a row whose path the store already has is left alone, so a killed import (or one whose
source grew) is finished by running it again.

Export: every indexed image (not skipped files, not a video's later frames: its first frame is its own row), in
id order, as float16 vectors (clip-retrieval's own precision) and metadata with `image_path` (absolute) or `url`,
the newest caption, width, height, taken_at and clipdex_id. Each shard is written under a temporary name and
renamed, so a killed export never leaves half a shard.
"""

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from indexer.errors import BadInputError, ModelMismatchError, StoreNotFoundError, reporting_full_disk
from indexer.settings import Settings
from indexer.store import INDEXED, Caption, Image, Root, Store, get_root, open_store, utcnow
from indexer.store.base import newest_caption

CHUNK = 10_000  # rows in memory (as float32) and per committed transaction
CAPTION_MODEL = "import:clip-retrieval"
CLIPDEX_FILE = "clipdex.json"
SHARD = re.compile(r"(?:img_emb|metadata)_(\d+)\.(?:npy|parquet)")
NO_PATH, OUTSIDE, BAD_VECTOR = "no image_path or url", "outside the root (pass --root)", "zero or non-finite vector"


@dataclass
class ImportSummary:
    source: str
    store: str
    model: str
    imported: int = 0
    present: int = 0  # rows whose path the store already had: an earlier run's, or repeated in the source
    captions: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.imported / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items(), key=lambda x: -x[1]))
        return (
            f"imported {self.imported} images ({self.captions} with captions) from {self.source} into {self.store} "
            f"in {self.seconds:.1f} s ({self.rows_per_second:.0f} rows/s)"
            + (f"; {self.present} were there already" if self.present else "")
            + (f"; skipped {skipped}" if skipped else "")
        )


@dataclass
class ExportSummary:
    store: str
    destination: str
    model: str
    dim: int
    exported: int = 0
    shards: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"exported {self.exported} images ({self.model}, {self.dim} wide) from {self.store} to {self.destination} "
            f"in {self.shards} shards in {self.seconds:.1f} s"
        )


# --- import -------------------------------------------------------------------------------------------------------


@dataclass
class Shard:
    vectors: Path
    metadata: Path
    rows: int
    dim: int


def find_shards(source: Path) -> list[Shard]:
    """The source's shards in order, each npy with its parquet; a malformed layout is refused before any writing."""
    vectors = shard_files(source / "img_emb", "img_emb")
    if not vectors:
        raise BadInputError(f"{source} holds no img_emb/img_emb_N.npy: not a clip-retrieval embeddings folder")
    metadata = shard_files(source / "metadata", "metadata")
    shards = []
    for number, path in sorted(vectors.items()):
        if number not in metadata:
            raise BadInputError(f"{path} has no metadata/metadata_{number}.parquet beside it")
        array = np.load(path, mmap_mode="r")
        rows = pq.ParquetFile(metadata[number]).metadata.num_rows
        if array.ndim != 2 or array.shape[0] != rows:
            raise BadInputError(f"{path} holds {array.shape} vectors but {metadata[number]} {rows} rows")
        shards.append(Shard(path, metadata[number], rows, array.shape[1]))
    widths = {shard.dim for shard in shards}
    if len(widths) > 1:
        raise BadInputError(f"the shards of {source} hold vectors of different widths: {sorted(widths)}")
    return shards


def shard_files(folder: Path, prefix: str) -> dict[int, Path]:
    """{N: path} of the folder's `<prefix>_N` files (N zero-padded or not, as clip-retrieval pads it)."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = SHARD.fullmatch(path.name)
        if match and path.name.startswith(prefix):
            found[int(match.group(1))] = path
    return found


def source_model(source: Path, model: str | None) -> str:
    """The model the embeddings were made with: `--model`, checked against a clipdex export's own record."""
    recorded = json.loads((source / CLIPDEX_FILE).read_text())["model"] if (source / CLIPDEX_FILE).exists() else None
    if model is None and recorded is None:
        raise BadInputError(f"name the model the embeddings of {source} were made with (--model): its files do not say")
    if model is not None and recorded is not None and model != recorded:
        raise ModelMismatchError(f"{source} was exported from a store of {recorded}, not {model}")
    return model or recorded


def open_for_import(location: str, model: str, dim: int, settings: Settings) -> Store:
    """The store, made for the model at the source's width, or an existing one of that model and width."""
    options = {"index_memory": settings.index_memory, "lock_timeout": settings.lock_timeout}
    try:
        store = open_store(location, model=model, **options)
    except StoreNotFoundError:
        return open_store(location, model=model, dim=dim, create=True, **options)
    if store.dim != dim:
        raise BadInputError(f"the embeddings are {dim} wide but the store {location} holds {store.dim}-wide vectors")
    return store


def import_embeddings(
    source: Path, model: str | None, settings: Settings, root: Path | None = None, show_progress: bool = False
) -> ImportSummary:
    """Add the embeddings of a clip-retrieval folder to the store of `settings` (made when missing) as indexed
    images; `model` (canonical) is what made them. Re-running it adds only what the store lacks."""
    started = time.perf_counter()
    source = Path(source).expanduser()
    shards = find_shards(source)
    model = source_model(source, model)
    store = open_for_import(str(settings.store), model, shards[0].dim, settings)
    summary = ImportSummary(str(source), store.location, model)
    with store.writing(None, settings.lock_timeout), reporting_full_disk(Path(str(settings.store))):
        files = FileRoot(store, shards, root)
        progress = progress_bar("importing", show_progress)
        with progress:
            task = progress.add_task("import", total=sum(shard.rows for shard in shards))
            for shard in shards:
                for vectors, metadata in read_shard(shard):
                    import_chunk(store, files, vectors, metadata, summary)
                    progress.advance(task, len(vectors))
        store.save_index()
    summary.seconds = time.perf_counter() - started
    return summary


def read_shard(shard: Shard) -> Iterator[tuple[np.ndarray, dict[str, list]]]:
    """(float32 vectors, {column: values}) of a shard in chunks: never more than a chunk in memory."""
    array = np.load(shard.vectors, mmap_mode="r")
    wanted = ["image_path", "url", "caption", "width", "height", "taken_at"]
    parquet = pq.ParquetFile(shard.metadata)
    columns = [name for name in wanted if name in parquet.schema_arrow.names]
    start = 0
    for batch in parquet.iter_batches(batch_size=CHUNK, columns=columns or None):
        metadata = {
            name: batch.column(name).to_pylist() if name in columns else [None] * batch.num_rows for name in wanted
        }
        yield np.asarray(array[start : start + batch.num_rows], dtype=np.float32), metadata
        start += batch.num_rows


class FileRoot:
    """Where an import's local files go: one root for every `image_path` row (see the module's docstring)."""

    def __init__(self, store: Store, shards: list[Shard], root: Path | None):
        # Relative image paths are taken from --root, else from the current directory (where clip-retrieval ran).
        self.base = os.path.abspath(Path(root).expanduser()) if root is not None else os.getcwd()
        self.lexical = self.base if root is not None else common_folder(shards)
        if self.lexical is None:  # no local files at all
            self.path, self.prefix = None, ""
            return
        resolved = Path(self.lexical).resolve()
        holding = [Path(r) for r in store.roots() if "://" not in r and resolved.is_relative_to(r)]
        self.path = str(max(holding, key=lambda r: len(r.parts)) if holding else resolved)
        self.prefix = resolved.relative_to(self.path).as_posix() if holding else ""

    def file(self, image_path: str) -> str:
        return os.path.abspath(os.path.join(self.base, image_path))

    def relpath(self, image_path: str) -> str | None:
        """The path within the root, None outside it."""
        relative = os.path.relpath(self.file(image_path), self.lexical)
        if relative == "." or relative.startswith(".."):
            return None
        return Path(self.prefix, relative).as_posix()


def common_folder(shards: list[Shard]) -> str | None:
    """The deepest folder holding every file row's `image_path` (relative ones from the current directory), None
    without any."""
    common = None
    for shard in shards:
        parquet = pq.ParquetFile(shard.metadata)
        names = [name for name in ("image_path", "url") if name in parquet.schema_arrow.names]
        if "image_path" not in names:
            continue
        for batch in parquet.iter_batches(batch_size=CHUNK, columns=names):
            urls = batch.column("url").to_pylist() if "url" in names else [None] * batch.num_rows
            paths = batch.column("image_path").to_pylist()
            folders = {os.path.dirname(os.path.abspath(p)) for p, url in zip(paths, urls, strict=True) if p and not url}
            if folders:
                common = os.path.commonpath([*folders, *([common] if common else [])])
    return common


def import_chunk(
    store: Store, files: FileRoot, vectors: np.ndarray, metadata: dict[str, list], summary: ImportSummary
) -> None:
    """One transaction: the chunk's new rows, their vectors (unit length) and captions."""
    norms = np.linalg.norm(vectors, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    vectors = vectors / np.where(usable, norms, 1)[:, None]
    with store.session() as s:
        places = []  # (position in the chunk, root id, relpath, absolute file or None)
        roots: dict[str, int] = {}
        for i, (image_path, url) in enumerate(zip(metadata["image_path"], metadata["url"], strict=True)):
            where = place(files, image_path, url)
            reason = where if isinstance(where, str) else None if usable[i] else BAD_VECTOR
            if reason:
                summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
            else:
                root, relpath, file = where
                if root not in roots:  # get_root keys roots by str(path): a URL's root stays a string
                    roots[root] = get_root(s, root).id
                places.append((i, roots[root], relpath, file))
        seen = present(s, [(root_id, relpath) for _, root_id, relpath, _ in places])
        rows, chunk_vectors, captions = [], {}, []
        for i, root_id, relpath, file in places:
            if (root_id, relpath) in seen:
                continue
            seen.add((root_id, relpath))  # a path repeated in the source: its first row counts
            size, mtime = file_stamp(file)
            row = Image(
                root_id=root_id, relpath=relpath, size=size, mtime_ns=mtime, status=INDEXED, indexed_at=utcnow(),
                width=whole(metadata["width"][i]), height=whole(metadata["height"][i]),
                taken_at=taken if isinstance(taken := metadata["taken_at"][i], datetime) else None,
            )  # fmt: skip
            s.add(row)
            chunk_vectors[len(rows)] = vectors[i]
            rows.append(row)
            if metadata["caption"][i]:
                captions.append((row, metadata["caption"][i]))
        s.flush()  # the new rows' ids, for their captions
        now = utcnow()
        s.add_all(
            Caption(image_id=row.id, model=CAPTION_MODEL, prompt="", text=text, created_at=now)
            for row, text in captions
        )
        store.commit_images(s, rows, chunk_vectors)
    store.save_if_due()
    summary.imported += len(rows)
    summary.present += len(places) - len(rows)
    summary.captions += len(captions)


def place(files: FileRoot, image_path: str | None, url: str | None) -> tuple[str, str, str | None] | str:
    """(root path, relpath, the local file or None) of a row, or the reason it is skipped."""
    if url:
        parts = urlsplit(url)
        relpath = parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
        if not (parts.scheme and parts.netloc and relpath):
            return NO_PATH
        return f"{parts.scheme}://{parts.netloc}", relpath, None
    if not image_path or files.path is None:
        return NO_PATH
    relpath = files.relpath(image_path)
    if relpath is None:
        return OUTSIDE
    return files.path, relpath, files.file(image_path)


def present(session: Session, keys: list[tuple[int, str]]) -> set[tuple[int, str]]:
    """The (root id, relpath) pairs among `keys` that the store has."""
    found = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        query = select(Image.root_id, Image.relpath).where(tuple_(Image.root_id, Image.relpath).in_(chunk))
        found.update(tuple(row) for row in session.execute(query))
    return found


def file_stamp(file: str | None) -> tuple[int, int]:
    """(size, mtime_ns) of a file that exists, else (0, 0): a later index run then embeds it anew."""
    try:
        stat = os.stat(file) if file else None
    except OSError:
        stat = None
    return (stat.st_size, stat.st_mtime_ns) if stat else (0, 0)


# --- export -------------------------------------------------------------------------------------------------------


METADATA = pa.schema(
    [
        ("image_path", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("taken_at", pa.timestamp("us")),
        ("clipdex_id", pa.int64()),
    ]
)


def export_embeddings(
    store: Store, destination: Path, lock_timeout: float, shard_size: int = 1_000_000, show_progress: bool = False
) -> ExportSummary:
    """Write the store's indexed images into `destination` (new or empty) in clip-retrieval's layout. The store's
    writer lock is held meanwhile (indexing waits), so the rows hold still."""
    started = time.perf_counter()
    destination = Path(destination).expanduser()
    if shard_size < 1:
        raise BadInputError("the shard size must be at least 1")
    if any(
        (destination / folder).is_dir() and any((destination / folder).iterdir()) for folder in ("img_emb", "metadata")
    ):
        raise BadInputError(f"{destination} already holds embeddings: export into a new or empty folder")
    summary = ExportSummary(store.location, str(destination), store.model, store.dim)
    with store.writing(None, lock_timeout):  # each shard then holds the count it was made for
        total = store.count_vectors()
        for folder in ("img_emb", "metadata"):
            (destination / folder).mkdir(parents=True, exist_ok=True)
        (destination / CLIPDEX_FILE).write_text(json.dumps({"model": store.model, "dim": store.dim, "images": total}))
        shards = -(-total // shard_size)
        digits = len(str(shards))  # zero-padded like clip-retrieval, so names sort in order
        progress = progress_bar("exporting", show_progress)
        with progress:
            task = progress.add_task("export", total=total)
            chunks = store.iter_vectors(CHUNK)
            pending: tuple[np.ndarray, np.ndarray] | None = None
            for number in range(shards):
                rows = min(shard_size, total - number * shard_size)
                name = str(number).zfill(digits)
                pending = write_shard(
                    store, destination, name, rows, chunks, pending, lambda n: progress.advance(task, n)
                )
                summary.exported += rows
                summary.shards += 1
    summary.seconds = time.perf_counter() - started
    return summary


def write_shard(
    store: Store,
    destination: Path,
    name: str,
    rows: int,
    chunks: Iterator[tuple[np.ndarray, np.ndarray]],
    pending: tuple[np.ndarray, np.ndarray] | None,
    advance: Callable[[int], object],
) -> tuple[np.ndarray, np.ndarray] | None:
    """Write the next `rows` vectors of `chunks` (after `pending`, what the last shard left) as shard `name`;
    returns what is left of the last chunk read."""
    vectors_path = destination / "img_emb" / f"img_emb_{name}.npy"
    metadata_path = destination / "metadata" / f"metadata_{name}.parquet"
    vectors_tmp, metadata_tmp = vectors_path.with_suffix(".npy.part"), metadata_path.with_suffix(".parquet.part")
    array = np.lib.format.open_memmap(vectors_tmp, mode="w+", dtype=np.float16, shape=(rows, store.dim))
    with pq.ParquetWriter(metadata_tmp, METADATA) as writer:
        done = 0
        while done < rows:
            ids, vectors = pending if pending is not None else next(chunks)
            take = min(rows - done, len(ids))
            array[done : done + take] = vectors[:take]
            writer.write_table(metadata_table(store, ids[:take]))
            pending = (ids[take:], vectors[take:]) if take < len(ids) else None
            done += take
            advance(take)
    array.flush()
    del array
    os.replace(vectors_tmp, vectors_path)
    os.replace(metadata_tmp, metadata_path)
    return pending


def progress_bar(label: str, show: bool) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not show)


def metadata_table(store: Store, ids: np.ndarray) -> pa.Table:
    """The metadata rows of these ids, in their order."""
    newest = newest_caption().label("caption")
    query = (
        select(Image.id, Root.path, Image.relpath, newest, Image.width, Image.height, Image.taken_at)
        .join(Root)
        .where(Image.id >= int(ids[0]), Image.id <= int(ids[-1]), Image.status == INDEXED)
    )
    with store.session() as s:
        found = {row.id: row for row in s.execute(query)}
    columns: dict[str, list] = {name: [] for name in METADATA.names}
    for i in ids.tolist():
        row = found[i]
        web = "://" in row.path  # a web image's root is its URL's scheme and host
        location = f"{row.path}/{row.relpath}" if web else str(Path(row.path) / row.relpath)
        columns["image_path"].append(None if web else location)
        columns["url"].append(location if web else None)
        columns["caption"].append(row.caption)
        columns["width"].append(row.width)
        columns["height"].append(row.height)
        columns["taken_at"].append(row.taken_at)
        columns["clipdex_id"].append(i)
    return pa.table(columns, schema=METADATA)


def whole(value) -> int | None:
    """A width or height: pandas makes a column with gaps float (NaN for the gaps), other values are no size."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None

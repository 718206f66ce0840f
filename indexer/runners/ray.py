"""The Ray runner: listing as tasks that walk folders, decoding as Ray Data tasks on CPU workers, embedding in an
actor pool (one per GPU), chunks written as shards by the workers.

The driver (the `clipdex index --ray` process) never holds the whole collection: the listing comes back as one
sorted table per folder and is merged with the store's rows as a stream (manifest.py), the work goes to the
cluster in parts, and what comes back is a name per shard. The embedded store takes each shard in (a transaction
each, as the local pipeline's chunks); PostgreSQL takes them in parallel, in actors with their own connections.
Every node must see the folder at the same path (a filesystem all nodes mount), and the embedded store's folder
too, which is checked before any work starts. Ray retries the tasks and restarts the actors of a worker that
dies (a retried shard is written whole under a new name, or rewritten in place by PostgreSQL); a killed driver
loses the shards not yet taken in.
"""

import json
import logging
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.decode import Decoded
from indexer.errors import BadInputError
from indexer.quiet import silenced
from indexer.runners import manifest
from indexer.runners.work import (
    ChunkWriter,
    Pending,
    WriteCounts,
    decode_config,
    indexing_progress,
    reuse_twin,
    stored_files,
)
from indexer.scan import FileStat, ScanResult, hidden_prefixes
from indexer.settings import Settings
from indexer.store import open_store
from indexer.video import VideoFrames
from indexer.worker import LoadResult, WorkerConfig, load_file, use_config

if TYPE_CHECKING:
    from indexer.models.embedder import Embedder
    from indexer.store import Store

log = logging.getLogger(__name__)

DECODE_BATCH = 16  # files per decode task: a task costs about a millisecond to schedule, a file 10-50 ms to decode
# Parts of work at most, a decode task each: DECODE_BATCH files up to 160k files, larger parts beyond (each part is
# a ray.put, ~1 ms of the driver's time while it merges the listing).
MAX_BLOCKS = 10_000
INGEST_FOLDER = "ingest"  # in the embedded store's folder: the shards of the run in progress
INTAKE_ACTORS = 2  # PostgreSQL connections committing shards at once


@dataclass
class ClusterUse:
    """Which of the cluster's workers took part in a run, for the closing summary."""

    nodes: int = 0
    decoders: set[str] = field(default_factory=set)  # "node:pid" of each process that decoded
    embedders: set[str] = field(default_factory=set)  # "node:pid:device" of each embedding actor

    def line(self) -> str:
        gpus = sum(name.endswith(":cuda") for name in self.embedders)
        return (
            f"on Ray: {len(self.decoders)} decode workers, {len(self.embedders)} embedding actors "
            f"({gpus} GPUs) on {self.nodes} node{'s' if self.nodes != 1 else ''}"
        )


def connect(address: str):
    """The `ray` module, connected to the cluster at `address`; "default" is Ray's own choice (RAY_ADDRESS, else
    the cluster this machine runs, else a new one on this machine)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise BadInputError("indexing on Ray needs the ray extra: pip install 'clipdex[ray]'") from None
    # Set after the import, which configures it: Ray Data's start, finish and progress bar notices on the console.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # A run of fewer chunks than actors is told it will not use them all: nothing to do about it.
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    if not ray.is_initialized():
        # The driver's C++ core logs to stderr, and Ray Data's actor pools make it print an error in every run
        # (ray-project/ray#57733): only fatal ones now. Its line saying so at start-up is silenced; what goes wrong
        # reaches clipdex as Python exceptions.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        check_reachable(address)
        try:
            with silenced(2):
                ray.init(address=None if address == "default" else address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise BadInputError(f"cannot reach the Ray cluster at {address}: {e}") from None
    return ray


def check_reachable(address: str) -> None:
    """A clear error within seconds for a host:port nobody answers on (Ray itself retries for many minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():  # "auto", "default": Ray finds the cluster itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise BadInputError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def list_folders(folders: list[str]) -> str | None:
    """Runs on every node: None when this node can list every folder, else why not."""
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                next(entries, None)
        except OSError as e:
            return f"{type(e).__name__}: {e.strerror or e}"
    return None


def check_every_node_reads(ray, root: Path, shards: Path | None = None) -> int:
    """Raise a clear error unless every live node can list `root` (and the folder the workers write shards to)
    and run clipdex's code; the number of nodes."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(list_folders)
    folders = [str(root)] + ([str(shards)] if shards is not None else [])
    nodes = [node for node in ray.nodes() if node["Alive"]]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(folders)
        for node in nodes
    ]
    problems = []
    for node, ref in zip(nodes, refs, strict=True):
        try:
            error = ray.get(ref, timeout=120)
        except ray.exceptions.RayError as e:  # clipdex not installed there, the node died, ...
            error = str(e).strip().splitlines()[-1]
        if error:
            problems.append(f"node {node['NodeManagerAddress']}: {error}")
    if problems:
        shared = f" and the store's folder {shards.parent.parent} (or index into PostgreSQL)" if shards else ""
        raise BadInputError(
            f"every Ray node must read {root}{shared} at that same path (a filesystem all nodes mount, clipdex "
            "installed on each): " + "; ".join(problems)
        )
    return len(nodes)


def decode_batch(batch: dict[str, np.ndarray], root: str, config: WorkerConfig) -> dict[str, np.ndarray]:
    """Ray Data task: read, hash and decode a batch of files; the pixels travel on as raw bytes to the embedders."""
    use_config(config)
    results = [load_file(Path(root, relpath)) for relpath in batch["relpath"]]
    decoded = [r.decoded for r in results]
    # A video's kept frames travel as one block of bytes, (frames, height, width) in pixel_shape, and its times as
    # JSON: a still is a video of one frame to the embedders.
    # "" for none: a column of nothing but None would have no type on its way through Arrow.
    return batch | {
        "hash": np.array([r.hash or "" for r in results], dtype=object),
        "skip_reason": np.array([r.skip_reason or "" for r in results], dtype=object),
        "width": np.array([d.width if d else 0 for d in decoded], dtype=np.int64),
        "height": np.array([d.height if d else 0 for d in decoded], dtype=np.int64),
        "format": np.array([d.format if d else "" for d in decoded], dtype=object),
        "taken_at": np.array([d.taken_at.isoformat() if d and d.taken_at else "" for d in decoded], dtype=object),
        "phash": np.array([d.phash if d else "" for d in decoded], dtype=object),
        "pixels": np.array([b"".join(p.tobytes() for p in r.pixels) for r in results], dtype=object),
        # (frames, height, width) of the pixels: a NaFlex model's vary from image to image.
        "pixel_shape": np.array(
            [(len(r.pixels), *r.pixels[0].shape[:2]) if r.pixels else (0, 0, 0) for r in results], dtype=np.int64
        ),
        "video": np.array([video_facts(r.video) for r in results], dtype=object),
        "decoded_by": np.array([worker_name()] * len(results), dtype=object),
    }


class EmbedActor:
    """Ray Data actor: loads the model once, then embeds the decoded files of each chunk it is given, the model's
    batch at a time; with `shards` (the embedded store's), it writes each chunk there as a shard and returns only
    the shard's name and facts."""

    def __init__(self, model: str, settings: Settings, device: str, shards: str | None):
        from indexer.models.runtimes import make_embedder

        self.embedder = make_embedder(model, settings.model_copy(update={"device": device}))
        self.name, self.shards = f"{worker_name()}:{device}", shards

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels, shapes = batch.pop("pixels"), batch.pop("pixel_shape")
        pictures = [
            frame
            for data, shape in zip(pixels, shapes, strict=True)
            for frame in np.frombuffer(data, np.uint8).reshape(*shape, 3)
        ]
        size = self.embedder.batch_size
        vectors = [self.embedder.embed_pixels(pictures[i : i + size]) for i in range(0, len(pictures), size)]
        vectors = np.concatenate(vectors) if vectors else np.zeros((0, self.embedder.dim), np.float32)
        ends = np.cumsum([shape[0] for shape in shapes])
        per_file = np.array([v.astype(np.float32).tobytes() for v in np.split(vectors, ends[:-1])], dtype=object)
        batch |= {
            "vectors": per_file,
            "pictures": shapes[:, 0],
            "embedded_by": np.array([self.name] * len(pixels), dtype=object),
        }
        return write_shard(batch, self.shards, self.embedder.dim) if self.shards else batch


def index_on_ray(
    root: Path,
    root_id: int,
    store: "Store",
    load_embedder: Callable[[], "Embedder"],
    settings: Settings,
    show_progress: bool,
    use: ClusterUse,
) -> tuple[ScanResult, WriteCounts]:
    """The Ray twin of the local scan and pipeline: list the folder on the cluster and merge it with the store's
    rows as a stream, then decode, embed and write shards there; the store takes each shard in as it comes (the
    embedded store in this process, from files the workers wrote under its folder; PostgreSQL in parallel actors
    of its own). Returns the scan (deletions are the caller's, last) and what was written."""
    ray = connect(settings.ray)
    shards = None if store.parallel_writers else store.local_dir.resolve() / INGEST_FOLDER
    if shards is not None:  # a killed run's shards: its files are listed again now, so they go
        shutil.rmtree(shards, ignore_errors=True)
        shards = shards / uuid.uuid4().hex
        shards.mkdir(parents=True)
    try:
        use.nodes = check_every_node_reads(ray, root, shards)
        scan, streamed = list_and_diff(ray, root, root_id, store)
        counts = WriteCounts()
        if streamed.todo:
            counts = write_on_ray(
                ray, streamed, root, root_id, store, load_embedder(), settings, shards, show_progress, use
            )
    finally:
        if shards is not None:
            shutil.rmtree(shards.parent, ignore_errors=True)
    return scan, counts


def list_and_diff(ray, root: Path, root_id: int, store: "Store") -> tuple[ScanResult, manifest.StreamedScan]:
    """List the folder and merge it with the store's rows in tasks, a folder each (manifest.py); the driver merges
    the files it listed itself with the rows outside those folders. The work stays in Ray's object store, in parts
    of a decode task's worth or more (MAX_BLOCKS in all at most), as references in the driver."""
    plan = manifest.plan(root)
    walk = ray.remote(num_cpus=1, num_returns="streaming")(manifest.walk_and_diff)
    parts_each = max(1, MAX_BLOCKS // max(1, len(plan.folders)))
    args = (plan.seen, store_address(store), root_id, DECODE_BATCH, parts_each)
    walks = [walk.remote(root, folder, *args) for folder in plan.folders]
    streamed = manifest.StreamedScan(found=plan.found)
    hidden = hidden_prefixes(root, plan.found.unreadable)
    ranges = [manifest.folder_range(root, folder) for folder in plan.folders]
    rows = (row for gap in manifest.outside(ranges) for row in stored_files(store, root_id, *gap))
    part_rows = manifest.part_size(plan.files, DECODE_BATCH, parts_each)
    streamed.parts = [ray.put(part) for part in manifest.changed_parts(plan.files, rows, hidden, part_rows, streamed)]
    for refs in walks:
        *parts, summary = list(refs)  # references: the parts stay where the task left them
        folder = ray.get(summary)
        folder.parts = parts
        streamed.add(folder)
    found = streamed.found
    scan = ScanResult(
        unchanged=streamed.unchanged,
        deleted=streamed.deleted.tolist(),
        unreadable_dirs=found.unreadable,
        sidecars=found.sidecars,
        motions=found.motions,
    )
    return scan, streamed


def store_address(store: "Store") -> str:
    """Where a worker opens the store: the embedded store's folder, or the database URL as the engine has it
    (`store.location` hides the password)."""
    return str(store.local_dir.resolve()) if store.local_dir else store.engine.url.render_as_string(hide_password=False)


def write_on_ray(
    ray,
    streamed: manifest.StreamedScan,
    root: Path,
    root_id: int,
    store: "Store",
    embedder: "Embedder",
    settings: Settings,
    shards: Path | None,
    show_progress: bool,
    use: ClusterUse,
) -> WriteCounts:
    config = decode_config(store, embedder, settings)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own bar, as the local pipeline does
    context.print_on_execution_start = False
    files = ray.data.from_arrow_refs(streamed.parts)
    # Decoding takes a CPU per task. Embedding actors reserve a GPU each, or, on CPU-only clusters, one actor per
    # node shares the cores with the decoders, as the local pipeline's embedding does with its decode workers.
    decoded = files.map_batches(
        decode_batch, fn_kwargs={"root": str(root), "config": config}, batch_size=DECODE_BATCH, num_cpus=1
    )
    # A chunk (`commit_every` files) is what one transaction commits: the embedding actors write it as a shard for
    # the embedded store, or hand it to an intake actor that commits it into PostgreSQL.
    embedded = decoded.map_batches(
        EmbedActor,
        fn_constructor_kwargs={
            "model": store.model,
            "settings": settings,
            "device": "cuda" if gpus else "cpu",
            "shards": str(shards) if shards is not None else None,
        },
        batch_size=settings.commit_every,
        compute=ray.data.ActorPoolStrategy(size=gpus or use.nodes),
        num_gpus=1 if gpus else 0,
        num_cpus=0,
    )
    written = embedded
    if shards is None:
        written = embedded.map_batches(
            IntakeActor,
            # The URL as the engine has it: `store.location` hides the password.
            fn_constructor_kwargs={
                "location": store.engine.url.render_as_string(hide_password=False),
                "root_id": root_id,
            },
            batch_size=settings.commit_every,
            compute=ray.data.ActorPoolStrategy(size=INTAKE_ACTORS),
            num_cpus=0,
        )
    counts = WriteCounts()
    progress = indexing_progress(show_progress)
    started = time.perf_counter()
    with progress:
        task = progress.add_task("index", total=streamed.todo, rate=0.0)
        done = 0
        for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
            for row in range(len(batch["files"])):
                if shards is not None:
                    counts.add(take_in_shard(store, root_id, shards / batch["shard"][row]))
                else:
                    counts.add(WriteCounts(**json.loads(batch["counts"][row])))
                use.decoders.update(json.loads(batch["decoded_by"][row]))
                use.embedders.update(json.loads(batch["embedded_by"][row]))
                done += int(batch["files"][row])
            progress.update(task, completed=done, rate=done / (time.perf_counter() - started))
    return counts


def write_shard(batch: dict[str, np.ndarray], directory: str, dim: int) -> dict[str, np.ndarray]:
    """A chunk of embedded files as a shard beside the store, its float16 vectors (`.npy`) and its rows (`.parquet`,
    written last: a shard whose rows are there is whole; a chunk embedded again writes a new one)."""
    name = f"shard-{uuid.uuid4().hex}"
    vectors = np.frombuffer(b"".join(batch.pop("vectors")), np.float32).reshape(-1, dim)
    folder = Path(directory)
    with open(folder / f"{name}.npy.tmp", "wb") as f:
        np.save(f, vectors.astype(np.float16))
    os.replace(folder / f"{name}.npy.tmp", folder / f"{name}.npy")
    table = pa.table({key: pa.array(list(column)) for key, column in batch.items()})
    pq.write_table(table, folder / f"{name}.parquet.tmp")
    os.replace(folder / f"{name}.parquet.tmp", folder / f"{name}.parquet")
    return {"shard": np.array([name], dtype=object)} | chunk_facts(batch)


def chunk_facts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One result row for a chunk: its files, and which workers decoded and embedded them (JSON lists)."""
    embedded_by = {e for e, p in zip(batch["embedded_by"], batch["pictures"], strict=True) if p}
    return {
        "files": np.array([len(batch["relpath"])], dtype=np.int64),
        "decoded_by": np.array([json.dumps(sorted(set(batch["decoded_by"])))], dtype=object),
        "embedded_by": np.array([json.dumps(sorted(embedded_by))], dtype=object),
    }


def take_in_shard(store: "Store", root_id: int, path: Path) -> WriteCounts:
    """Commit a shard the workers wrote (the driver, for the embedded store), then delete it."""
    rows = pq.read_table(path.with_suffix(".parquet")).to_pydict()
    flat = np.load(path.with_suffix(".npy")).astype(np.float32)
    ends = np.cumsum(rows["pictures"])
    counts = take_in(store, root_id, rows, np.split(flat, ends[:-1]) if len(ends) else [])
    path.with_suffix(".parquet").unlink()
    path.with_suffix(".npy").unlink()
    return counts


def take_in(store: "Store", root_id: int, rows, vectors: list[np.ndarray]) -> WriteCounts:
    """Commit a chunk of finished files (columns as decode_batch and EmbedActor leave them) in one transaction."""
    writer = ChunkWriter(store, root_id)
    for row in range(len(rows["relpath"])):
        image_id = int(rows["image_id"][row])
        pending = Pending(
            stat=FileStat(str(rows["relpath"][row]), int(rows["size"][row]), int(rows["mtime_ns"][row])),
            image_id=None if image_id < 0 else image_id,
            result=load_result(rows, row),
        )
        if pending.result.decoded is not None:
            pending.vectors = vectors[row]
        elif pending.result.skip_reason is None and not reuse_twin(pending, store):
            continue
        writer.add(pending)
    writer.commit()
    return writer.counts


class IntakeActor:
    """Ray Data actor for a store that takes writers in parallel (PostgreSQL): commits chunks on its own
    connection, so the driver writes nothing."""

    def __init__(self, location: str, root_id: int):
        self.store, self.root_id = open_store(location), root_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dim = self.store.dim
        vectors = [np.frombuffer(v, np.float32).reshape(-1, dim) for v in batch["vectors"]]
        counts = take_in(self.store, self.root_id, batch, vectors)
        written = {"indexed": counts.indexed, "reused": counts.reused, "skipped": dict(counts.skipped)}
        return {"shard": np.array([""], dtype=object), **chunk_facts(batch)} | {
            "counts": np.array([json.dumps(written)], dtype=object)
        }


def load_result(batch: dict[str, np.ndarray], row: int) -> LoadResult:
    """One row of a finished batch as the LoadResult the local pipeline has (its pixels stay on the cluster)."""
    digest, reason, fmt = batch["hash"][row] or None, batch["skip_reason"][row] or None, batch["format"][row]
    if reason is not None or not fmt:  # skipped, or known content whose vector is reused
        return LoadResult(hash=digest, skip_reason=reason)
    taken_at = batch["taken_at"][row]
    decoded = Decoded(
        pixels=np.empty((0, 0, 3), dtype=np.uint8),
        width=int(batch["width"][row]),
        height=int(batch["height"][row]),
        format=str(fmt),
        taken_at=datetime.fromisoformat(taken_at) if taken_at else None,
        phash=str(batch["phash"][row]),
    )
    facts = batch["video"][row]
    if not facts:
        return LoadResult(hash=digest, decoded=decoded)
    facts = json.loads(facts)
    video = VideoFrames(
        **facts, width=decoded.width, height=decoded.height, taken_at=decoded.taken_at, frames=[], phash=decoded.phash
    )
    return LoadResult(hash=digest, decoded=decoded, video=video)


def video_facts(video: VideoFrames | None) -> str:
    """What the driver needs of a decoded video besides its pixels and the row's facts, as JSON ("" for a still)."""
    if video is None:
        return ""
    keys = ("duration_s", "codec", "container", "timestamps", "cut_off")
    return json.dumps({key: getattr(video, key) for key in keys})

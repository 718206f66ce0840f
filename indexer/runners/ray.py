"""The Ray runner: decoding as Ray Data tasks on CPU workers, embedding in an actor pool (one per GPU).

The driver (the `clipdex index --ray` process) lists the folder, diffs it against the store and commits rows and
vectors in chunks exactly as the local pipeline does; only the per-file work moves to the cluster. Every node
must see the folder at the same path (a filesystem all nodes mount), which is checked before any work starts.
Ray retries the tasks and restarts the actors of a worker that dies; a killed driver loses its uncommitted chunk.
"""

import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.decode import Decoded
from indexer.errors import BadInputError
from indexer.runners.work import Pending, decode_config, indexing_progress, reuse_twin
from indexer.scan import FileStat
from indexer.settings import Settings
from indexer.video import VideoFrames
from indexer.worker import LoadResult, WorkerConfig, load_file, use_config

if TYPE_CHECKING:
    from indexer.models.embedder import Embedder
    from indexer.store import Store

log = logging.getLogger(__name__)

DECODE_BATCH = 16  # files per decode task: a task costs about a millisecond to schedule, a file 10-50 ms to decode
MAX_BLOCKS = 50_000  # input blocks at most: a block per decode task up to 800k files, larger blocks beyond


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
    if not ray.is_initialized():
        check_reachable(address)
        try:
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


def list_folder(root: str) -> str | None:
    """Runs on every node: None when this node can list the folder, else why not."""
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def check_every_node_reads(ray, root: Path) -> int:
    """Raise a clear error unless every live node can list `root` and run clipdex's code; the number of nodes."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(list_folder)
    nodes = [node for node in ray.nodes() if node["Alive"]]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(root))
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
        raise BadInputError(
            f"every Ray node must read {root} at that same path (a filesystem all nodes mount, clipdex installed on "
            "each): " + "; ".join(problems)
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
    """Ray Data actor: loads the model once, then embeds the decoded files of each batch it is given."""

    def __init__(self, model: str, settings: Settings, device: str):
        from indexer.models.runtimes import make_embedder

        self.embedder = make_embedder(model, settings.model_copy(update={"device": device}))
        self.name = f"{worker_name()}:{device}"

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
        return batch | {"vectors": per_file, "embedded_by": np.array([self.name] * len(pixels), dtype=object)}


def run_on_ray(
    root: Path,
    todo,
    embedder: "Embedder",
    store: "Store",
    settings: Settings,
    show_progress: bool,
    use: ClusterUse,
) -> Iterator[Pending]:
    """The Ray twin of `local.run_workers`: yields Pending files (in the order they finish), and records in `use`
    which of the cluster's workers took part."""
    ray = connect(settings.ray)
    use.nodes = check_every_node_reads(ray, root)
    known_hashes, config = decode_config(store, embedder, settings)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own bar, as the local pipeline does
    context.print_on_execution_start = False
    items = [
        {"relpath": stat.relpath, "size": stat.size, "mtime_ns": stat.mtime_ns, "image_id": -1 if i is None else i}
        for stat, i in todo
    ]
    blocks = min(math.ceil(len(items) / DECODE_BATCH), MAX_BLOCKS)
    files = ray.data.from_items(items, override_num_blocks=blocks)
    # Decoding takes a CPU per task. Embedding actors reserve a GPU each, or, on CPU-only clusters, one actor per
    # node shares the cores with the decoders, as the local pipeline's embedding does with its decode workers.
    decoded = files.map_batches(
        decode_batch, fn_kwargs={"root": str(root), "config": config}, batch_size=DECODE_BATCH, num_cpus=1
    )
    embedded = decoded.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"model": store.model, "settings": settings, "device": "cuda" if gpus else "cpu"},
        batch_size=settings.batch_size or (256 if gpus else 16),
        compute=ray.data.ActorPoolStrategy(size=gpus or use.nodes),
        num_gpus=1 if gpus else 0,
        num_cpus=0,
    )
    progress = indexing_progress(show_progress)
    started = time.perf_counter()
    with progress:
        task = progress.add_task("index", total=len(todo), rate=0.0)
        done = 0
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            for row in range(len(batch["relpath"])):
                pending = Pending(
                    stat=FileStat(str(batch["relpath"][row]), int(batch["size"][row]), int(batch["mtime_ns"][row])),
                    image_id=None if batch["image_id"][row] < 0 else int(batch["image_id"][row]),
                    result=load_result(batch, row),
                )
                use.decoders.add(batch["decoded_by"][row])
                if pending.result.decoded is not None:
                    pending.vectors = np.frombuffer(batch["vectors"][row], np.float32).reshape(-1, embedder.dim)
                    use.embedders.add(batch["embedded_by"][row])
                elif pending.result.skip_reason is None and not reuse_twin(pending, store, known_hashes):
                    continue
                yield pending
            done += len(batch["relpath"])
            progress.update(task, completed=done, rate=done / (time.perf_counter() - started))


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

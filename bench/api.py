"""HTTP query latency of `clipdex serve`: text queries and similar-by-id at 10k, 100k and 1M stored vectors.

Stores hold synthetic CLIP-like 512-d vectors (tests/support/planted.py); the text encoder is the full-size CLIP
ViT-B/32 text tower with random weights, the same compute as the real one. The server runs in its own
process; clients are asyncio HTTP clients in this one. Every text query is distinct, so the service's
query-vector cache never helps. Recall@10 of the store's index against exact search is printed for
held-out vectors from the same distribution and for stored vectors (what similar-by-id asks).

    python -m bench.api [--sizes 10000,100000,1000000] [--requests 300] [--clients 8]
"""

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.indexing import vit_b32
from bench.smoke import CLIP_DIM, DATA, announce, pick
from indexer.models.cpu import cpu_line
from indexer.store import open_store
from indexer.store.ann import ExactTop, recall_at
from tests.support.planted import ClipLike, plant_vectors

WORDS = "dog cat beach car night street sofa sunset mountain lake document table wedding food pasta sneaker".split()


def text_queries(count: int, seed: int = 0) -> list[str]:
    """Distinct queries of 3 to 8 words (10 to 15 tokens with start and end)."""
    rng = random.Random(seed)
    return [f"a photo of {' '.join(rng.choices(WORDS, k=rng.randint(3, 8)))} {i}" for i in range(count)]


def recall(store_dir: Path, stored: np.ndarray, held_out: np.ndarray) -> tuple[str, float, float, float]:
    """(index description, build seconds, recall@10 on held-out vectors, on stored vectors without self)."""
    store = open_store(store_dir)
    started = time.perf_counter()
    store.sync_index()
    build_s = time.perf_counter() - started
    own = np.random.default_rng(1).integers(1, len(stored) + 1, 200)

    def exact(queries: np.ndarray, k: int) -> np.ndarray:
        truth = ExactTop(queries, k)
        for start in range(0, len(stored), 100_000):
            truth.add(
                np.arange(start + 1, start + len(stored[start : start + 100_000]) + 1), stored[start : start + 100_000]
            )
        return truth.ids

    found_new = [[i for i, _ in store.search(q, 10)] for q in held_out]
    found_stored = [[i for i, _ in store.search(stored[i - 1], 10, exclude=(int(i),))] for i in own]
    exact_stored = [row[row != i][:10] for row, i in zip(exact(stored[own - 1], 11), own, strict=True)]
    return (
        store.index_description(),
        build_s,
        recall_at(found_new, exact(held_out, 10)),
        recall_at(found_stored, exact_stored),
    )


def start_server(store_dir: Path | str, runtime: str = "auto") -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "search", "serve", "--store", str(store_dir), "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "CLIPDEX_RUNTIME": runtime, "CLIPDEX_CACHE_DIR": str(DATA / "cache")},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/api/health").status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not start")


async def load(urls: str | list[str], paths: list[str], clients: int) -> tuple[list[float], float]:
    """Fetch every path with `clients` concurrent clients, spread over the servers at `urls`;
    (latencies in ms, seconds for all)."""
    urls = [urls] if isinstance(urls, str) else urls
    queue = list(reversed(paths))
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            path = queue.pop()
            started = time.perf_counter()
            response = await http.get(path)
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=clients)
    https = [httpx.AsyncClient(base_url=url, limits=limits, timeout=60) for url in urls]
    try:
        for http in https:
            await http.get("/api/health")
        started = time.perf_counter()
        await asyncio.gather(*(client(https[n % len(https)]) for n in range(clients)))
        return latencies, time.perf_counter() - started
    finally:
        for http in https:
            await http.aclose()


def measure(url: str, name: str, paths: list[str], clients: int) -> None:
    """Print p50/p95 for one client at a time, then p50/p95 and requests/s for `clients` at once."""
    asyncio.run(load(url, paths[:20], 1))  # warm up
    split = len(paths) // 3
    single, _ = asyncio.run(load(url, paths[20:split], 1))
    many, seconds = asyncio.run(load(url, paths[split:], clients))
    print(
        f"    {name:18} 1 client p50 {np.percentile(single, 50):6.2f} ms  p95 {np.percentile(single, 95):6.2f} ms"
        f"  | {clients} clients p50 {np.percentile(many, 50):6.2f} ms  p95 {np.percentile(many, 95):6.2f} ms"
        f"  {len(many) / seconds:6.1f} requests/s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=pick("10000,100000,1000000", "1000"), help="comma-separated vector counts")
    parser.add_argument("--requests", type=int, default=pick(300, 90), help="requests per query kind and size")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runtimes", default="auto,onnx", help="CLIPDEX_RUNTIME values to serve with")
    args = parser.parse_args()
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{cpu_line()}; load {load_avg}")
    announce()
    print("query latency over HTTP (clipdex serve, ViT-B/32 text tower, random weights, CPU)")
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-api-") as tmp:
        model_dir = vit_b32()  # exported once into DATA/cache, not on every run
        for count in (int(s) for s in args.sizes.split(",")):
            vectors = ClipLike(CLIP_DIM).images(count + 200)
            store_dir = Path(tmp) / f"store-{count}"
            plant_vectors(store_dir, vectors[:count], model=str(model_dir.resolve()))
            kind, build_s, recall_new, recall_stored = recall(store_dir, vectors[:count], vectors[count:])
            del vectors
            print(
                f"  {count:>9,} vectors: {kind}, built in {build_s:.1f} s; recall@10 vs exact "
                f"{recall_new:.3f} (held-out queries), {recall_stored:.3f} (stored, as similar-by-id)",
                flush=True,
            )
            for runtime in args.runtimes.split(","):
                server, url = start_server(store_dir, runtime)
                try:
                    rng = np.random.default_rng(2)
                    queries = [f"/api/search?k=10&q={q}" for q in text_queries(args.requests)]
                    measure(url, f"text {runtime}", queries, args.clients)
                    ids = rng.integers(1, count + 1, args.requests)
                    measure(url, f"similar {runtime}", [f"/api/images/{i}/similar?k=10" for i in ids], args.clients)
                finally:
                    server.terminate()
                    server.wait()


if __name__ == "__main__":
    main()

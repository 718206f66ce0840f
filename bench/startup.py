"""Start-up costs as a user meets them: a cold `clipdex search`, `clipdex similar`, and a 5-image `clipdex index`.

Each is a fresh process from the shell (median of 5), with the full-size ViT-B/32 (random weights) whose ONNX
export is already cached, as after the first use. The cold search is then split into its parts, timed in
one process: imports, opening the store, loading the text tower, embedding the query, searching.

    python -m bench.startup
"""

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.smoke import DATA, announce, pick
from indexer.models.cpu import cpu_line

DATA = DATA.resolve()
RUNS = pick(5, 1)
PHOTOS = pick(300, 8)
PARTS = """
import time
started = time.perf_counter()
from search.service import Service
from indexer.settings import Settings
imported = time.perf_counter()
engine = Service(Settings(store={store!r}))
engine.store.warm()
opened = time.perf_counter()
engine.embedder.tower("text").session("text")  # a one-shot command's text tower: ONNX Runtime, never measured
loaded = time.perf_counter()
vector = engine.embed_query("a dog on a beach")
embedded = time.perf_counter()
engine.search_vector(vector, 10)
done = time.perf_counter()
print(imported - started, opened - imported, loaded - opened, embedded - loaded, done - embedded)
"""


def wall(command: list[str], env: dict, prepare=None) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MB) of `command` over RUNS fresh processes."""
    times, peaks = [], []
    for _ in range(RUNS):
        if prepare:
            prepare()
        timed = ["/usr/bin/time", "-f", "%M", *command] if Path("/usr/bin/time").exists() else command
        started = time.perf_counter()
        done = subprocess.run(timed, env=env, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - started)
        if timed is not command:
            peaks.append(int(done.stderr.strip().splitlines()[-1]) / 1024)
    return statistics.median(times), max(peaks, default=0.0)


def main() -> None:
    from bench.indexing import vit_b32
    from tests.support.photos import write_photos

    print(cpu_line())
    announce()
    model = vit_b32().resolve()
    photos, five = DATA / "startup-photos", DATA / "startup-five"
    if not photos.exists():
        write_photos(photos, PHOTOS, size=(1024, 768))
        write_photos(five, 5, size=(1024, 768))
    env = {**os.environ, "CLIPDEX_CACHE_DIR": str(DATA / "cache"), "CLIPDEX_DEVICE": "cpu"}
    clipdex = [sys.executable, "-m", "search"]
    store, small_store = DATA / "stores" / "startup-300", DATA / "stores" / "startup-5"
    if not (store / "clipdex.db").exists():  # the first run also exports the model (once)
        command = [*clipdex, "index", str(photos), "--store", str(store), "--model", str(model)]
        subprocess.run(command, env=env, check=True)

    seconds, peak = wall([*clipdex, "search", "a dog on a beach", "--store", str(store)], env)
    print(f"cold search ({RUNS} fresh processes, {PHOTOS}-image store): median {seconds:.2f} s, peak RSS {peak:.0f} MB")
    command = [sys.executable, "-c", PARTS.format(store=str(store))]
    parts = [list(map(float, subprocess.check_output(command, env=env).split())) for _ in range(pick(3, 1))]
    names = ("imports", "open store + index", "text tower", "embed query", "search")
    split = ", ".join(f"{n} {statistics.median(p[i] for p in parts) * 1000:.0f} ms" for i, n in enumerate(names))
    print(f"  in one process: {split}; the rest is the interpreter's start and the output")
    seconds, peak = wall([*clipdex, "similar", "1", "--store", str(store)], env)
    print(f"cold similar by id (no model): median {seconds:.2f} s, peak RSS {peak:.0f} MB")
    seconds, peak = wall(
        [*clipdex, "index", str(five), "--store", str(small_store), "--model", str(model)],
        env,
        prepare=lambda: shutil.rmtree(small_store, ignore_errors=True),
    )
    print(f"index a 5-image folder into a new store: median {seconds:.2f} s, largest process peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()

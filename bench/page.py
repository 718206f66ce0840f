"""The page's first paint on a big store: the collection newest first, as a new visitor opens it.

A store of synthetic CLIP-like vectors with photo rows (tests/support/planted.py; 1M, BENCH_QUICK=1: 100k) whose
newest photos exist as JPEGs, served by `clipdex serve` in its own process; Debian's headless chromium (Playwright)
opens `/`. It prints the listing's API time (`GET /api/images?k=24`, p50 of 20) and the time from navigation to the
first page of photos painted with every thumbnail loaded: on the service's first page view (thumbnails made then)
and on a reload (thumbnails cached).

    python -m bench.page [--size 1000000]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.api import start_server
from bench.indexing import vit_b32
from bench.smoke import CLIP_DIM, announce, pick
from indexer.models.cpu import cpu_line
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.photos import photo
from tests.support.planted import ClipLike, plant_vectors

PAGE = 24  # the page's first page of photos
PAINTED = (
    f"document.querySelectorAll('#grid .hit img').length >= {PAGE} && "
    "[...document.querySelectorAll('#grid .hit img')].every((img) => img.complete)"
)


def first_paint(browser, url: str) -> float:
    """Seconds from navigation to the first page of photos painted, every thumbnail loaded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_function(PAINTED, timeout=600_000)
    seconds = time.perf_counter() - started
    page.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    parser.add_argument("--size", type=int, default=pick(100_000 if quick else 1_000_000, 2_000))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    print(cpu_line())
    announce()
    print(f"page: a store of {args.size:,} photos, the page opened on the collection newest first")
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-page-") as tmp:
        root, store = Path(tmp) / "photos", Path(tmp) / "store"
        started = time.perf_counter()
        model = str(vit_b32().resolve())  # the service loads its text tower when it starts
        plant_vectors(store, ClipLike(CLIP_DIM).image_chunks(args.size), model=model, root=root)
        print(f"  planted in {time.perf_counter() - started:.0f} s", flush=True)
        server, url = start_server(store)
        try:
            listed = httpx.get(f"{url}/api/images", params={"k": 2 * PAGE}, timeout=600).json()["photos"]
            for n, shown in enumerate(listed):  # the newest photos exist: their thumbnails are made from files
                path = Path(shown["path"])
                path.parent.mkdir(parents=True, exist_ok=True)
                photo(n, (1600, 1200)).save(path, quality=90)
            times = []
            for _ in range(20):
                began = time.perf_counter()
                httpx.get(f"{url}/api/images", params={"k": PAGE}, timeout=60).raise_for_status()
                times.append(time.perf_counter() - began)
            print(f"  GET /api/images?k={PAGE}: p50 {np.median(times) * 1000:.1f} ms", flush=True)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                cold, warm = first_paint(browser, url), first_paint(browser, url)
                browser.close()
            print(
                f"  first paint of {PAGE} photos: {cold * 1000:.0f} ms (thumbnails made), {warm * 1000:.0f} ms "
                "(reloaded, thumbnails cached)",
                flush=True,
            )
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()

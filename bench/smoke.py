"""Smoke runs (BENCH_SMOKE=1, `make bench-smoke`, part of CI): every bench on tiny inputs, through the same code.

A smoke run takes the tests' tiny random-weight models (tests/support/model_factory.py) instead of full-size ones, a
handful of images and a few thousand vectors, so that a broken import, signature or API fails in seconds; the
figures it prints mean nothing. Its generated inputs go to data/bench-smoke/, never beside a real run's.
"""

import os
from pathlib import Path

SMOKE = os.environ.get("BENCH_SMOKE", "") not in ("", "0")
CLIP_DIM = 16 if SMOKE else 512  # the embedding width of the benches' CLIP: synthetic vectors must match it
DATA = Path(os.environ.get("BENCH_DATA", "data/bench-smoke" if SMOKE else "data/bench"))
NOTE = "smoke run (BENCH_SMOKE=1): tiny models and inputs, the figures below mean nothing"


def pick(real, smoke):
    """`smoke` in a smoke run, else `real`."""
    return smoke if SMOKE else real


def announce(echo=print) -> None:
    """Say, under the CPU line, that this is a smoke run (nothing otherwise)."""
    if SMOKE:
        echo(NOTE)

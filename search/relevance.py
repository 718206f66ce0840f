"""Which hits stand out: a relevance cut-off calibrated for each query against the store itself.

A fixed cosine threshold does not carry from one query to the next: each text sits at its own distance
from the cone of image embeddings (CLIP's modality gap), so one query's irrelevant images can outscore
another's best match (rclip #207, Immich #5996). What does carry is how the query's scores on the store are
laid out. So each query is scored against a random sample of the store, and two things count as standing out:

1. Rare hits, above the bulk: the median and robust spread (1.4826 x the median absolute deviation, a
   normal's standard deviation) of the sample are the query's baseline; a hit is `z` spreads above it, and
   counts when a normal bulk of the store's size would put NOISE_HITS images that high by chance (z 4.1 at
   20k images, 4.6 at 200k, 4.9 at 1M; never below MIN_Z). This is what finds a few matches among many.
2. A group above a valley: the top part of the sorted scores, split from the rest by an empty stretch too
   wide for chance. A common subject (a fifth of a dog owner's photos, a shop's shoes in one colour) is no
   outlier: its matches are much of the sample and widen its spread, so (1) finds nothing; but they score
   as a group above the images that do not match, with few scores in between. Where the scores fall off in
   a tail, the spacings of the top k scores times their rank are about equally likely (Renyi's
   representation of an exponential-type tail; a normal tail is thinner, so this errs on the safe side), so
   a valley of j spacings below rank k that is T times wider than that scale has a chance of
   P(Gamma(j) > T) (j up to VALLEY_SPAN: a few images the model half-confuses may sit in it). Ranks are
   tested down to MAX_SHARE of the sample with FALSE_VALLEY shared out as 1/rank (a Bonferroni bound that
   spends most on the top ranks); among the valleys that pass, and that are at least COMPACT times as wide
   as the group above them spreads and VALLEY_SPREADS spreads of the scores under them (a bulk's own
   stretches are narrower), the widest holds the boundary, at its widest spacing.

The cut is the lower of the two. What it assumes: the images that do not match a query are at least half
the store; rare matches lie above a roughly normal bulk; common ones are separated from the rest by fewer
scores in between than a smooth fall-off would put there. A collection with no gap at all (a continuum
from "dog" to "not a dog") gets the rare rule only. A subject absent from the store leaves the scores one
smooth bulk: nothing passes either rule (a spread below MIN_SPREAD, less than float16 vectors resolve,
counts as MIN_SPREAD). Measured in bench/relevance.py: rare planted matches among up to 200k images,
planted matches of 0.5-40% of a collection, and the toy world (tests/support/toyworld.py) with a model that
knows it, for text and image queries; figures in bench/README.md.

NumPy and the standard library only: the query path imports no scipy.
"""

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from indexer.store import Store

SAMPLE_SIZE = 4096  # the median of 4096 scores is within ~0.02 spreads of the store's
NOISE_HITS = 0.5  # rare rule: noise hits a query may expect over the whole store
MIN_Z = 3.0  # a small store still needs a rare hit to stand out clearly
RESOLUTION = 1e-4  # cosines of float16 vectors differ by less only by rounding
MIN_SPREAD = 10 * RESOLUTION  # a bulk narrower than this is one score, rounded: it keeps z finite
# Valley rule (measured in bench/relevance.py on the toy world and planted data):
FALSE_VALLEY = 0.5  # chance, summed over the ranks tested, that a smooth fall-off shows a valley
VALLEY_SPAN = 5  # most spacings a valley spans: images inside it are neither hits nor background
LOCAL = 40  # spacings below a valley that set its scale
COMPACT = 0.1  # a valley at least this share of the width of the group above it
VALLEY_SPREADS = 0.25  # and this many spreads of the scores under it
MAX_SHARE = 0.5  # hits are at most this share of the sample: the rest is the background
SELF = 1 - 1e-3  # scores this high are the query image itself (or its copies): not background
# Below this many images there is no bulk to stand out from: the cut-off keeps every hit, with no relevance.
MIN_POPULATION = 200


@dataclass(frozen=True)
class Calibration:
    """How one query scores on the store's typical image, and where its hits start."""

    baseline: float  # median cosine over the sample
    spread: float  # robust standard deviation of those cosines
    z_cut: float

    def relevance(self, score: float) -> float:
        """Spreads above the baseline."""
        return (score - self.baseline) / self.spread

    @property
    def cut(self) -> float:
        """The lowest cosine that stands out."""
        return self.baseline + self.z_cut * self.spread


@dataclass(frozen=True)
class Background:
    """A random sample of the store's vectors and how many vectors the store holds."""

    sample: np.ndarray
    population: int

    def calibrate(self, vector: np.ndarray) -> Calibration | None:
        """The calibration of a unit query vector; None in a store too small to have one."""
        if self.population < MIN_POPULATION:
            return None
        return calibrate_scores(self.sample @ vector.astype(np.float32), self.population)


def calibrate_scores(scores: np.ndarray, population: int) -> Calibration:
    """The calibration of one query from its scores on a sample of a store of `population` images."""
    descending = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    background = descending[descending < SELF]
    descending = background if len(background) else descending  # a store of copies of the query: they are its bulk
    baseline, spread = bulk(descending)
    z_cut = rare_cut(population)
    valley = valley_cut(descending)
    if valley is not None:
        z_cut = min(z_cut, (valley - baseline) / spread)
    return Calibration(baseline, spread, z_cut)


def bulk(scores: np.ndarray) -> tuple[float, float]:
    """Median and robust spread (1.4826 x the median absolute deviation: the standard deviation of a normal)."""
    median = float(np.median(scores))
    return median, max(1.4826 * float(np.median(np.abs(scores - median))), MIN_SPREAD)


def rare_cut(population: int) -> float:
    """The z a normal bulk of `population` scores exceeds NOISE_HITS times, on average (at least MIN_Z)."""
    return max(MIN_Z, -NormalDist().inv_cdf(min(NOISE_HITS / max(population, 1), 0.5)))


def valley_cut(descending: np.ndarray) -> float | None:
    """The lowest score of the group above the widest valley that a smooth fall-off would not show, if any."""
    n = len(descending)
    ranks = np.arange(1, int(n * MAX_SHARE) + 1)  # k: the group above the valley is the top k scores
    if len(ranks) < 2:
        return None
    # i x (s_i - s_(i+1)): about equally likely at every rank i in an exponential-type tail
    scaled = np.arange(1, n) * (descending[:-1] - descending[1:])
    total = np.concatenate([[0.0], np.cumsum(scaled)])
    group_width = descending[0] - descending[ranks - 1]
    best_width, best = 0.0, None
    for span in range(1, VALLEY_SPAN + 1):
        below = np.minimum(ranks + span - 1, n - 1)  # the index of the first score under the valley
        end = np.minimum(below + LOCAL, n - 1)
        scale = (total[end] - total[below]) / np.maximum(end - below, 1)
        scale = np.maximum(scale, ranks * RESOLUTION)  # tied scores: rounding, not a crowd
        width = descending[ranks - 1] - descending[below]
        passes = (ranks * width / scale > valley_bars(len(ranks), span)) & (width >= COMPACT * group_width)
        for i in np.flatnonzero(passes):
            if width[i] > best_width and width[i] >= VALLEY_SPREADS * bulk(descending[below[i] :])[1]:
                best_width, best = float(width[i]), (int(ranks[i]) - 1, int(below[i]))
    if best is None:
        return None
    top, bottom = best  # the scores inside the valley go with the nearer side: split at its widest spacing
    inside = descending[top : bottom + 1]
    return float(inside[int(np.argmax(inside[:-1] - inside[1:]))])


@lru_cache(maxsize=64)
def valley_bars(ranks: int, span: int) -> np.ndarray:
    """Per rank k, the T that Gamma(span) exceeds with chance FALSE_VALLEY / (k x H x VALLEY_SPAN), H the
    harmonic number of `ranks`: the 1/k split of FALSE_VALLEY over ranks and spans."""
    k = np.arange(1, ranks + 1)
    chance = FALSE_VALLEY / (k * (math.log(ranks) + 0.5772) * VALLEY_SPAN)
    low, high = np.zeros(ranks), np.full(ranks, 200.0)
    for _ in range(60):  # bisection on P(Gamma(span) > t) = exp(-t) sum_{i < span} t^i / i!
        t = (low + high) / 2
        term = np.exp(-t)
        tail = term.copy()
        for i in range(1, span):
            term = term * t / i
            tail += term
        low, high = np.where(tail > chance, t, low), np.where(tail > chance, high, t)
    return (low + high) / 2


def sample_store(store: Store) -> Background:
    """The background of a store: a random sample of its vectors and how many it holds."""
    return Background(*store.sample_vectors(SAMPLE_SIZE))

"""Which hits stand out: a relevance cut-off calibrated for each query against the store itself.

A fixed cosine threshold does not carry from one query to the next: each text sits at its own distance
from the cone of image embeddings (CLIP's modality gap), so one query's irrelevant images can outscore
another's best match (rclip #207, Immich #5996). What does carry is how far a hit lies above what *this*
query scores on the typical stored image. So: score the query against a random sample of the store, take
the median (the baseline) and the robust spread (1.4826 x the median absolute deviation, the standard
deviation for a normal bulk, unmoved by the few true matches in the sample), and call a hit's relevance
its distance above the baseline in spreads (a z-score).

Where a hit stands out depends on how many images could stand out by chance: among N images some noise
reaches z = 4 once N is in the hundreds of thousands. So the cut is the z that a normal bulk exceeds with
probability NOISE_HITS / N: about half a noise hit per query whatever the store's size (z 4.1 at 20k images,
4.6 at 200k, 4.9 at 1M), and never below MIN_Z.

Measured in bench/relevance.py on planted data (few true matches among many distractors, queries whose
baselines differ as CLIP's do, and queries with no true match), against a fixed threshold tuned on other
queries; README.md has the table.
"""

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from indexer.store import Store

SAMPLE_SIZE = 4096  # the median of 4096 scores is within ~0.02 spreads of the store's
NOISE_HITS = 0.5  # noise hits a query may expect over the whole store
MIN_Z = 3.0  # a small store still needs a hit to stand out clearly
MIN_SPREAD = 1e-4  # a store of near-identical vectors: keep z finite
# Below this many images there is no bulk to stand out from: the cut-off keeps every hit, with no relevance.
MIN_POPULATION = 200


@dataclass(frozen=True)
class Calibration:
    """How one query scores on the store's typical image, and where its hits start to stand out."""

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
        scores = self.sample @ vector.astype(np.float32)
        baseline = float(np.median(scores))
        spread = max(1.4826 * float(np.median(np.abs(scores - baseline))), MIN_SPREAD)
        return Calibration(baseline, spread, z_cut=cut_for(self.population))


def cut_for(population: int) -> float:
    """The z a normal bulk of `population` scores exceeds NOISE_HITS times, on average."""
    # The standard library's normal quantile: scipy.stats cost every cold query half a second of imports.
    return max(MIN_Z, -NormalDist().inv_cdf(min(NOISE_HITS / max(population, 1), 0.5)))


def sample_store(store: Store) -> Background:
    """The background of a store: a random sample of its vectors and how many it holds."""
    return Background(*store.sample_vectors(SAMPLE_SIZE))

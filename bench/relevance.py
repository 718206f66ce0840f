"""The relevance cut-off (search/relevance.py) against a fixed cosine threshold, on planted data.

The collection: CLIP-like images (tests/planted.ClipLike: a cone of image vectors, clustered by subject),
plus, for each test query, 1-50 planted true matches around a concept of its own; a third of the queries
have no match at all. Queries sit in the text cone (the modality gap) with a per-query lean on that cone
and on their concept drawn at random, so each has its own baseline and margin, as CLIP's queries do.

Methods, each applied to the whole ranking of every query:
- fixed: one cosine threshold, the best F1 on a *different* query set (what a user tunes once);
- neutral: a hit's cosine minus the mean cosine of neutral prompts (concept-free texts) on the same image,
  one threshold tuned the same way;
- clipdex: per query, the median and robust spread of its scores over a 4096-image sample; hits at
  z >= the size-aware cut (search/relevance.py, nothing tuned).
Reported: mean precision and recall over the queries with matches, and for the queries without, the share
that returned nothing and the mean number of hits they returned.

    python -m bench.relevance [--sizes 20000 200000]
"""

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

from bench.indexing import console
from indexer.models.cpu import cpu_line
from search.relevance import SAMPLE_SIZE, Background
from tests.support.planted import ClipLike, unit

QUERIES = 90  # per set; a third without matches
NEUTRAL_PROMPTS = 8


@dataclass
class Scenario:
    vectors: np.ndarray  # the collection
    owner: np.ndarray  # per image: the test query it truly matches, or -1
    queries: np.ndarray  # test queries
    matches: np.ndarray  # true matches per test query
    train_queries: np.ndarray
    train_owner: np.ndarray  # per image: the training query it matches, or -1
    neutral: np.ndarray


def concept_set(like: ClipLike, rng, count: int):
    """Queries with their planted true matches (1-50 for two thirds of them, none for the rest)."""
    concepts = unit(rng.standard_normal((count, like.dim)))
    matches = np.where(np.arange(count) < count * 2 // 3, rng.integers(1, 51, count), 0)
    owner = np.repeat(np.arange(count), matches)
    noise = rng.standard_normal((len(owner), like.dim), dtype=np.float32) @ like.shape / np.float32(np.sqrt(like.dim))
    images = unit(0.7 * like.image_mean + 0.45 * concepts[owner] + 0.55 * noise)
    lean_on_cone = rng.uniform(0.45, 0.8, (count, 1))
    lean_on_concept = rng.uniform(0.25, 0.5, (count, 1))
    queries = unit(lean_on_cone * like.text_mean + lean_on_concept * concepts + 0.7 * random_units(rng, count, like))
    return images, owner, queries, matches


def random_units(rng, count: int, like: ClipLike) -> np.ndarray:
    return unit(rng.standard_normal((count, like.dim)))


def scenario(size: int, seed: int = 0, queries: int = QUERIES) -> Scenario:
    """`size` CLIP-like distractors plus the planted matches of a training and a test query set."""
    like = ClipLike(dim=512, clusters=1000, seed=seed)
    rng = np.random.default_rng(seed + 1)
    distractors = like.images(size, seed=seed + 2)
    train_images, train_owner, train_queries, _ = concept_set(like, rng, queries)
    test_images, test_owner, test_queries, matches = concept_set(like, rng, queries)
    vectors = np.concatenate([distractors, train_images, test_images])
    none = np.full(size, -1)
    lean_on_cone = rng.uniform(0.45, 0.8, (NEUTRAL_PROMPTS, 1))
    neutral = unit(lean_on_cone * like.text_mean + 0.7 * random_units(rng, NEUTRAL_PROMPTS, like))
    return Scenario(
        vectors=vectors,
        owner=np.concatenate([none, np.full(len(train_owner), -1), test_owner]),
        queries=test_queries,
        matches=matches,
        train_queries=train_queries,
        train_owner=np.concatenate([none, train_owner, np.full(len(test_owner), -1)]),
        neutral=neutral,
    )


def measure(scores: np.ndarray, cuts: np.ndarray, owner: np.ndarray) -> dict:
    """Precision/recall of `scores >= cuts` (queries x images) against the true owners."""
    precision, recall, empty, noise_hits = [], [], [], []
    for q, (row, cut) in enumerate(zip(scores, cuts, strict=True)):
        kept, true = row >= cut, owner == q
        if true.any():
            hits = kept.sum()
            precision.append((kept & true).sum() / hits if hits else 1.0)
            recall.append((kept & true).sum() / true.sum())
        else:
            empty.append(not kept.any())
            noise_hits.append(kept.sum())
    return dict(
        precision=float(np.mean(precision)),
        recall=float(np.mean(recall)),
        nothing_when_no_match=float(np.mean(empty)),
        hits_when_no_match=float(np.mean(noise_hits)),
    )


def tuned_threshold(scores: np.ndarray, owner: np.ndarray) -> float:
    """The single threshold with the best F1 (of mean precision and recall) on a query set."""
    best, best_f1 = 0.0, -1.0
    for threshold in np.quantile(scores[:, :: max(1, scores.shape[1] // 20_000)], 1 - np.geomspace(0.1, 1e-6, 200)):
        m = measure(scores, np.full(len(scores), threshold), owner)
        f1 = 2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"] + 1e-12)
        if f1 > best_f1:
            best, best_f1 = float(threshold), f1
    return best


def compare(s: Scenario) -> dict[str, dict]:
    """Each method's figures on the test queries."""
    scores = s.queries @ s.vectors.T
    train_scores = s.train_queries @ s.vectors.T
    fixed = tuned_threshold(train_scores, s.train_owner)
    neutral_baseline = (s.neutral @ s.vectors.T).mean(axis=0)
    neutral = tuned_threshold(train_scores - neutral_baseline, s.train_owner)
    sample = s.vectors[np.random.default_rng(9).choice(len(s.vectors), SAMPLE_SIZE, replace=False)]
    background = Background(sample, population=len(s.vectors))
    cuts = np.array([background.calibrate(q).cut for q in s.queries])
    return {
        "fixed": measure(scores, np.full(len(scores), fixed), s.owner) | {"cut": f"cosine >= {fixed:.3f}"},
        "neutral": measure(scores - neutral_baseline, np.full(len(scores), neutral), s.owner)
        | {"cut": f"cosine - neutral >= {neutral:.3f}"},
        "clipdex": measure(scores, cuts, s.owner) | {"cut": f"z >= {background.calibrate(s.queries[0]).z_cut:.2f}"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK") == "1"
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000] if quick else [20_000, 200_000])
    args = parser.parse_args()
    console.print(cpu_line())
    for size in args.sizes:
        started = time.perf_counter()
        s = scenario(size)
        console.print(
            f"\n{size:,} distractors + {int(s.matches.sum())} true matches of {len(s.queries)} test queries "
            f"({int((s.matches == 0).sum())} with none)"
        )
        console.print(f"{'method':8} {'cut':26} {'precision':>9} {'recall':>6} {'nothing':>7} {'noise':>5}")
        for name, m in compare(s).items():
            console.print(
                f"{name:8} {m['cut']:26} {m['precision']:9.3f} {m['recall']:6.3f} {m['nothing_when_no_match']:7.2f} "
                f"{m['hits_when_no_match']:5.1f}"
            )
        console.print("nothing: no-match queries that return nothing; noise: their mean hits")
        console.print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

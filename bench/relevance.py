"""The relevance cut-off (search/relevance.py), measured: rare planted matches, then matches of every share.

1. Rare matches, planted (the figures the cut-off was first tuned on). The collection: CLIP-like images
   (tests/support/planted.ClipLike: a cone of image vectors, clustered by subject), plus, for each test query,
   1-50 planted true matches around a concept of its own; a third of the queries have no match at all.
   Queries sit in the text cone (the modality gap) with a per-query lean on that cone and on their concept
   drawn at random, so each has its own baseline and margin, as CLIP's queries do. Methods, each applied to
   the whole ranking of every query:
   - fixed: one cosine threshold, the best F1 on a *different* query set (what a user tunes once);
   - neutral: a hit's cosine minus the mean cosine of neutral prompts (concept-free texts) on the same image,
     one threshold tuned the same way;
   - median: the cut-off before issue 30: the median and robust spread of the query's scores over the whole
     4096-image sample, hits at z >= the size-aware cut (the rare rule alone);
   - clipdex: search/relevance.py as it is (nothing tuned).
2. Matches of 0.5%, 5%, 20% and 40% of a collection, planted: the same CLIP-like images, a concept's
   matches making up the share; text queries as above, image queries a further match of the concept
   (what "similar" asks).
3. The same shares in the toy world (tests/support/toyworld.py) with the toy-world CLIP
   (tests/data/toyworld-clip/, loaded as clipdex loads a checkpoint, run in torch): fresh pictures, text
   queries for a colour and shape ("a photo of a red circle"), a colour ("something yellow") or a shape
   ("a star"), image queries a fresh picture of a class (its matches: its class); and subjects absent from
   the world ("a dog"), which should return nothing.
Reported: mean precision and recall over the queries with matches (a query returning nothing has precision
1), the share of them that returned nothing, and for queries without matches, the share that returned
nothing and their mean number of hits.

    python -m bench.relevance [--sizes 20000 200000] [--share-size 20000] [--toy-size 1000]

BENCH_QUICK=1: 20,000 distractors, fewer queries per share, a 400-picture toy world (about 10 s).
"""

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.indexing import console
from bench.smoke import announce, pick
from indexer.models.cpu import cpu_line
from search.relevance import SAMPLE_SIZE, Background, bulk, calibrate_scores, rare_cut
from tests.support import toyworld
from tests.support.planted import ClipLike, unit

QUERIES = 90  # per set; a third without matches
NEUTRAL_PROMPTS = 8
SHARES = (0.005, 0.05, 0.2, 0.4)
TOY_MODEL = Path(__file__).resolve().parents[1] / "tests" / "data" / "toyworld-clip"
ABSENT_QUERIES = ("a dog", "a photo of a cat", "a car", "a tree", "a giraffe", "a bicycle on a road")


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
    images = planted_images(like, rng, concepts[owner])
    queries = text_queries(like, rng, concepts)
    return images, owner, queries, matches


def planted_images(like: ClipLike, rng, concepts: np.ndarray) -> np.ndarray:
    """An image around each concept: in the image cone, the concept, and noise shaped as the cone's."""
    noise = (
        rng.standard_normal((len(concepts), like.dim), dtype=np.float32) @ like.shape / np.float32(np.sqrt(like.dim))
    )
    return unit(0.7 * like.image_mean + 0.45 * concepts + 0.55 * noise)


def text_queries(like: ClipLike, rng, concepts: np.ndarray) -> np.ndarray:
    """A text-like query for each concept, leaning on the text cone and on its concept by amounts of its own."""
    count = len(concepts)
    lean_on_cone = rng.uniform(0.45, 0.8, (count, 1))
    lean_on_concept = rng.uniform(0.25, 0.5, (count, 1))
    return unit(lean_on_cone * like.text_mean + lean_on_concept * concepts + 0.7 * random_units(rng, count, like))


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
    median = np.array([median_cut(sample @ q, len(s.vectors)) for q in s.queries])
    return {
        "fixed": measure(scores, np.full(len(scores), fixed), s.owner) | {"cut": f"cosine >= {fixed:.3f}"},
        "neutral": measure(scores - neutral_baseline, np.full(len(scores), neutral), s.owner)
        | {"cut": f"cosine - neutral >= {neutral:.3f}"},
        "median": measure(scores, median, s.owner) | {"cut": f"z >= {rare_cut(len(s.vectors)):.2f}"},
        "clipdex": measure(scores, cuts, s.owner) | {"cut": "the lower of z and valley"},
    }


def median_cut(sample_scores: np.ndarray, population: int) -> float:
    """The cut-off before issue 30: median and spread of the whole sample, the size-aware z (no common subjects)."""
    baseline, spread = bulk(sample_scores)
    return baseline + rare_cut(population) * spread


def sample_of(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The scores a store's background would see: all of a small collection's, else SAMPLE_SIZE at random."""
    return scores if len(scores) <= SAMPLE_SIZE else scores[rng.choice(len(scores), SAMPLE_SIZE, replace=False)]


@dataclass
class Tally:
    """Precision and recall of one method over the queries of one share (or absent-subject queries)."""

    precision: list = field(default_factory=list)
    recall: list = field(default_factory=list)
    nothing: list = field(default_factory=list)
    hits: list = field(default_factory=list)

    def add(self, kept: np.ndarray, truth: np.ndarray) -> None:
        found = int((kept & truth).sum())
        self.precision.append(found / kept.sum() if kept.any() else 1.0)
        self.recall.append(found / truth.sum() if truth.any() else 1.0)
        self.nothing.append(not kept.any())
        self.hits.append(int(kept.sum()))

    def row(self) -> str:
        return (
            f"{np.mean(self.precision):9.3f} {np.mean(self.recall):6.3f} {np.mean(self.nothing):7.2f} "
            f"{np.mean(self.hits):7.1f}"
        )


METHODS = {
    "median": median_cut,
    "clipdex": lambda sample_scores, population: calibrate_scores(sample_scores, population).cut,
}


def judge(tallies: dict[str, Tally], scores: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> None:
    """Add one query's outcome under every method: `scores` over its whole collection, `truth` its matches."""
    sample = sample_of(scores, rng)
    for name, cut in METHODS.items():
        tallies.setdefault(name, Tally()).add(scores >= cut(sample, len(scores)), truth)


def print_shares(title: str, results: dict[tuple[str, str], dict[str, Tally]]) -> None:
    console.print(f"\n{title}")
    console.print(f"{'queries':8} {'share':>6} {'method':8} {'precision':>9} {'recall':>6} {'nothing':>7} {'hits':>7}")
    for (kind, share), tallies in results.items():
        for name, tally in tallies.items():
            console.print(f"{kind:8} {share:>6} {name:8} {tally.row()}")


def planted_shares(size: int, queries: int, seed: int = 0) -> dict:
    """Each method's tallies by query kind and share: per query, a collection of `size` CLIP-like images of which
    the share are planted matches of the query's concept."""
    like = ClipLike(dim=512, clusters=1000, seed=seed)
    distractors = like.images(size, seed=seed + 2)
    rng = np.random.default_rng(seed + 3)
    results = {}
    for kind in ("text", "image"):
        for share in SHARES:
            tallies = results.setdefault((kind, f"{share:.1%}"), {})
            for _ in range(queries):
                concept = unit(rng.standard_normal((1, like.dim)))
                count = max(1, round(share * size))
                matches = planted_images(like, rng, np.repeat(concept, count + 1, axis=0))
                query = matches[-1] if kind == "image" else text_queries(like, rng, concept)[0]
                vectors = np.concatenate([matches[:count], distractors[: size - count]])
                judge(tallies, vectors @ query, np.arange(size) < count, rng)
    return results


def toy_embedder():
    """The toy-world CLIP, loaded as clipdex loads any checkpoint directory, run in torch."""
    from indexer.models.loading import load_model
    from indexer.models.torch_runtime import TorchEmbedder

    return TorchEmbedder(load_model(str(TOY_MODEL), "cpu"), 256)


def embed_pictures(embedder, pictures: list) -> np.ndarray:
    return np.concatenate(
        [embedder.embed_pixels(list(toyworld.draw_pixels(pictures[i : i + 256]))) for i in range(0, len(pictures), 256)]
    )


def toy_shares(size: int, seed: int = 0) -> tuple[dict, dict]:
    """Each method's tallies by query kind and share in the toy world, and on subjects absent from it.

    A pool of fresh pictures, `size * 0.4` of each class, is embedded once; each query's collection is `size`
    pictures of the pool, the share of them its matches (a class, a colour's four classes or a shape's six),
    the rest drawn from the pictures it does not match."""
    classes = toyworld.CLASSES
    rng = np.random.default_rng(seed)
    per_class = int(size * max(SHARES)) + 1
    pool = [toyworld.random_picture(rng, c, s) for c, s in classes for _ in range(per_class)]
    embedder = toy_embedder()
    vectors = embed_pictures(embedder, pool)
    label = np.repeat(np.arange(len(classes)), per_class)
    colour = np.array([c for c, _ in classes])[label]
    shape = np.array([s for _, s in classes])[label]
    texts = [(f"a photo of a {c} {s}", (colour == c) & (shape == s)) for c, s in classes]
    texts += [(f"something {c}", colour == c) for c in toyworld.COLOURS]
    texts += [(f"a {s}", shape == s) for s in toyworld.SHAPES]
    text_vectors = embedder.embed_texts([t for t, _ in texts])
    image_vectors = embed_pictures(embedder, [toyworld.random_picture(rng, c, s) for c, s in classes])
    queries = [("text", v, fits) for v, (_, fits) in zip(text_vectors, texts, strict=True)]
    queries += [("image", v, label == k) for k, v in enumerate(image_vectors)]
    results = {}
    for kind in ("text", "image"):
        for share in SHARES:
            tallies = results.setdefault((kind, f"{share:.1%}"), {})
            for query_kind, query, fits in queries:
                if query_kind != kind:
                    continue
                count = max(1, round(share * size))
                members = np.concatenate([
                    rng.choice(np.flatnonzero(fits), count, replace=False),
                    rng.choice(np.flatnonzero(~fits), size - count, replace=False),
                ])  # fmt: skip
                judge(tallies, vectors[members] @ query, np.arange(size) < count, rng)
    absent = {}
    for query in embedder.embed_texts(list(ABSENT_QUERIES)):
        for _ in range(4):
            members = rng.choice(len(vectors), size, replace=False)
            judge(absent, vectors[members] @ query, np.zeros(size, dtype=bool), rng)
    return results, absent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000] if quick else [20_000, 200_000])
    parser.add_argument("--share-size", type=int, default=pick(20_000, 4_000), help="planted collection per query")
    parser.add_argument("--share-queries", type=int, default=pick(6 if quick else 20, 2), help="per kind and share")
    parser.add_argument("--toy-size", type=int, default=pick(400 if quick else 1000, 250), help="toy collection")
    args = parser.parse_args()
    console.print(cpu_line())
    announce(console.print)
    for size in args.sizes:
        started = time.perf_counter()
        s = scenario(size)
        console.print(
            f"\n1. rare matches: {size:,} distractors + {int(s.matches.sum())} true matches of {len(s.queries)} test "
            f"queries ({int((s.matches == 0).sum())} with none)"
        )
        console.print(f"{'method':8} {'cut':28} {'precision':>9} {'recall':>6} {'nothing':>7} {'noise':>5}")
        for name, m in compare(s).items():
            console.print(
                f"{name:8} {m['cut']:28} {m['precision']:9.3f} {m['recall']:6.3f} {m['nothing_when_no_match']:7.2f} "
                f"{m['hits_when_no_match']:5.1f}"
            )
        console.print("nothing: no-match queries that return nothing; noise: their mean hits")
        console.print(f"({time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    print_shares(
        f"2. planted matches by share of a {args.share_size:,}-image collection, {args.share_queries} queries each",
        planted_shares(args.share_size, args.share_queries),
    )
    console.print(f"({time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    results, absent = toy_shares(args.toy_size)
    print_shares(f"3. toy world by share of a {args.toy_size}-picture collection (34 text, 24 image queries)", results)
    console.print(f"\nsubjects absent from the toy world ({', '.join(ABSENT_QUERIES)}), 4 collections each")
    console.print(f"{'method':8} {'nothing':>7} {'hits':>7}")
    for name, tally in absent.items():
        console.print(f"{name:8} {np.mean(tally.nothing):7.2f} {np.mean(tally.hits):7.1f}")
    console.print("nothing: queries that return nothing; hits: their mean hit count")
    console.print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

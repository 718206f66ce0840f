"""Zero-shot tagging: a classifier made of label embeddings, applied to the vectors already in the store.

The classifier is data, as in open_clip's `zero_shot_classifier`: every label is written into every
template, the texts are embedded, averaged per label and renormalised. Tagging a store is then one
matrix product per chunk of stored vectors; images are never re-embedded and the full images x labels
score matrix never exists (a 16,384-image chunk against 1,000 labels is 64 MB).

What a score means:
- CLIP, single-label (default): softmax over the label set of `logit_scale * cosine`, the probability
  that this label is the right one *among these labels*. Scores of one image sum to 1, so they change
  when labels are added or removed.
- CLIP, multi-label: each label on its own, `sigmoid(logit_scale * (cos(image, label) - cos(image,
  baseline)))`, the two-way softmax between the label and the label-free prompt "something" written
  through the same templates. Above 0.5 the label describes the image better than saying nothing;
  other labels do not move it. CLIP was trained with a softmax, so this is our calibration, not CLIP's.
- SigLIP, both modes: `sigmoid(logit_scale * cosine + logit_bias)`, the per-label probability SigLIP
  was trained to give. Single-label keeps the best label(s) by it.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlalchemy import delete, func, select

from indexer.enrich.batches import CHUNK, read_ahead
from indexer.enrich.labels import DEFAULT_SET, TagOptions
from indexer.errors import NotFoundError
from indexer.models.embedder import Embedder, embed_prompts
from indexer.store import SKIPPED, Image, LabelSet, Store, Tag, utcnow

BASELINE_LABEL = "something"  # CLIP multi-label scores compare each label with this one


@dataclass
class Classifier:
    """Label embeddings and the model's scoring: scores = activation(scale * vectors @ weights.T + bias).

    Not thread-safe: it keeps its score buffers between chunks (allocating 64 MB per chunk costs more
    than the softmax).
    """

    labels: list[str]
    weights: np.ndarray  # (labels, dim) float32
    activation: str  # "softmax" over the labels, or "sigmoid" per label
    scale: float
    bias: float
    buffers: dict = field(default_factory=dict, repr=False)

    def logits(self, vectors: np.ndarray) -> torch.Tensor:
        """(n, labels) log-probabilities (softmax) or logits (sigmoid) of unit image vectors."""
        n = len(vectors)
        if "scaled" not in self.buffers:  # the scale folded into the weights saves a pass over the scores
            self.buffers["scaled"] = torch.from_numpy(self.weights * np.float32(self.scale)).T.contiguous()
        if self.buffers.get("out", torch.empty(0)).shape[0] < n:
            self.buffers["out"] = torch.empty(n, len(self.labels))
            self.buffers["scratch"] = torch.empty(n, len(self.labels))
        x = torch.from_numpy(np.require(vectors, np.float32, ["C", "W"]))  # torch wants writable memory
        logits = torch.mm(x, self.buffers["scaled"], out=self.buffers["out"][:n])
        if self.bias:
            logits.add_(self.bias)
        if self.activation == "softmax":  # log-softmax in place: subtract log(sum(exp)), stabilised by the max
            top = logits.max(dim=1, keepdim=True).values
            exp = torch.sub(logits, top, out=self.buffers["scratch"][:n]).exp_()
            logits.sub_(exp.sum(dim=1, keepdim=True).log_().add_(top))
        return logits

    def to_probability(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.exp() if self.activation == "softmax" else torch.sigmoid(logits)

    def cut(self, threshold: float) -> float:
        """The threshold in logit space, so only the kept entries need a probability computed."""
        return float(np.log(threshold) if self.activation == "softmax" else np.log(threshold / (1 - threshold)))

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(n, labels) probabilities; for a handful of vectors (tagging a store uses `select`)."""
        with torch.inference_mode():
            return self.to_probability(self.logits(vectors)).numpy()

    def select(self, vectors: np.ndarray, options: TagOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tags of a chunk as (row, label index, score) arrays, by top_k and/or threshold."""
        with torch.inference_mode():
            logits = self.logits(vectors)
            if options.top_k is not None:
                values, cols = logits.topk(options.top_k, dim=1)
                rows = torch.arange(len(logits)).unsqueeze(1).expand_as(cols)
                if options.threshold is not None:
                    keep = values >= self.cut(options.threshold)
                    rows, cols, values = rows[keep], cols[keep], values[keep]
            else:
                rows, cols = torch.nonzero(logits >= self.cut(options.threshold), as_tuple=True)
                values = logits[rows, cols]
            return rows.reshape(-1).numpy(), cols.reshape(-1).numpy(), self.to_probability(values).reshape(-1).numpy()


@dataclass
class LabelScore:
    """One label of a classified image, with its score (see the module docstring for its meaning)."""

    label: str
    score: float


@dataclass
class TagSummary:
    """What one tagging run did; `line()` is the closing summary users see."""

    label_set: str
    labels: int
    images: int = 0
    tags: int = 0
    label_seconds: float = 0.0  # embedding the prompts with the text tower
    seconds: float = 0.0  # reading the stored vectors, scoring them, writing the tags (and committing)
    read_seconds: float = 0.0
    score_seconds: float = 0.0
    write_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.images / self.seconds if self.seconds else 0.0
        return (
            f"tagged {self.images} images with {self.tags} tags from {self.labels} labels (set {self.label_set!r}) "
            f"in {self.seconds:.1f} s ({rate:,.0f} images/s; label embeddings {self.label_seconds:.1f} s)"
        )


# --- the classifier ------------------------------------------------------------------------------------


def activation(family: str, multi_label: bool) -> str:
    """How a model family scores: "softmax" over the labels (CLIP, single-label) or "sigmoid" per label."""
    return "sigmoid" if family == "siglip" or multi_label else "softmax"


def build_classifier(
    embedder: Embedder, labels: Sequence[str], templates: Sequence[str], multi_label: bool = False
) -> Classifier:
    """Embed the prompts and take the model's scale (and SigLIP's bias)."""
    scale = embedder.info.logit_scale
    weights = embed_prompts(embedder, labels, templates)
    if embedder.info.family == "siglip":
        return Classifier(list(labels), weights, "sigmoid", scale, embedder.info.logit_bias)
    if multi_label:
        baseline = embed_prompts(embedder, [BASELINE_LABEL], templates)
        return Classifier(list(labels), weights - baseline, "sigmoid", scale, 0.0)
    return Classifier(list(labels), weights, "softmax", scale, 0.0)


def rank_labels(classifier: Classifier, vector: np.ndarray, top_k: int | None = None) -> list[LabelScore]:
    """Every label (or the best top_k) of one image vector, best first."""
    scores = classifier.scores(vector.reshape(1, -1))[0]
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [LabelScore(classifier.labels[i], float(scores[i])) for i in order]


# --- tagging the store ---------------------------------------------------------------------------------


def tag_store(
    store: Store,
    classifier: Classifier,
    templates: Sequence[str],
    options: TagOptions,
    name: str = DEFAULT_SET,
    show_progress: bool = False,
) -> TagSummary:
    """Tag every stored image and save the label set; an existing set of that name is replaced, atomically."""
    options = options.resolved(len(classifier.labels))
    summary = TagSummary(label_set=name, labels=len(classifier.labels))
    started, clock = utcnow(), time.perf_counter()
    with store.session() as s:
        s.execute(delete(Tag).where(Tag.label_set == name))
        s.execute(delete(LabelSet).where(LabelSet.name == name))
        s.add(
            LabelSet(
                name=name,
                model=store.model,
                labels=classifier.labels,
                templates=list(templates),
                options={"top_k": options.top_k, "threshold": options.threshold, "multi_label": options.multi_label},
                activation=classifier.activation,
                scale=classifier.scale,
                bias=classifier.bias,
                weights=classifier.weights.astype(np.float32).tobytes(),
                tagged_at=started,
            )
        )
        write_tags(s, store, name, classifier, options, None, summary, show_progress)
        s.commit()  # one transaction: readers see the old set or the new one, never half of it
    summary.seconds = time.perf_counter() - clock
    return summary


def retag_store(store: Store, show_progress: bool = False) -> list[TagSummary]:
    """Tag the images indexed since each saved label set last ran (new and changed files) with that set."""
    summaries = []
    with store.session() as s:
        sets = s.scalars(select(LabelSet).where(LabelSet.model == store.model).order_by(LabelSet.name)).all()
        # A file that changed into an unreadable one has no vector any more, so no tags either.
        s.execute(delete(Tag).where(Tag.image_id.in_(select(Image.id).where(Image.status == SKIPPED))))
        s.commit()
    for label_set in sets:
        classifier = saved_classifier(label_set, store.dim)
        options = TagOptions(**label_set.options)
        summary = TagSummary(label_set=label_set.name, labels=len(classifier.labels))
        started, clock = utcnow(), time.perf_counter()
        with store.session() as s:
            write_tags(s, store, label_set.name, classifier, options, label_set.tagged_at, summary, show_progress)
            s.get(LabelSet, label_set.id).tagged_at = started
            s.commit()
        summary.seconds = time.perf_counter() - clock
        summaries.append(summary)
    return summaries


def saved_classifier(label_set: LabelSet, dim: int) -> Classifier:
    weights = np.frombuffer(label_set.weights, dtype=np.float32).reshape(-1, dim).copy()  # writable for torch
    return Classifier(list(label_set.labels), weights, label_set.activation, label_set.scale, label_set.bias)


def write_tags(
    session,
    store: Store,
    name: str,
    classifier: Classifier,
    options: TagOptions,
    indexed_after: datetime | None,
    summary: TagSummary,
    show_progress: bool,
) -> None:
    """Score the stored vectors chunk by chunk and insert their tags in the caller's transaction."""
    total = store.count_vectors(indexed_after)
    progress = Progress(
        TextColumn(f"tagging {name}"), BarColumn(), MofNCompleteColumn(), disable=not show_progress, transient=True
    )
    labels, counts = classifier.labels, np.zeros(len(classifier.labels), dtype=np.int64)
    with progress:
        task = progress.add_task("tag", total=total)
        chunks = read_ahead(store.iter_vectors(CHUNK, indexed_after))
        while True:
            clock = time.perf_counter()
            chunk = next(chunks, None)
            summary.read_seconds += time.perf_counter() - clock
            if chunk is None:
                break
            chunk_ids, vectors = chunk
            clock = time.perf_counter()
            rows, cols, scores = classifier.select(vectors, options)
            ids = chunk_ids[rows]
            summary.score_seconds += time.perf_counter() - clock
            clock = time.perf_counter()
            if indexed_after is not None:  # changed files keep their id: drop their old tags
                session.execute(delete(Tag).where(Tag.label_set == name, Tag.image_id.in_(chunk_ids.tolist())))
            if len(ids):
                store.insert_rows(
                    session,
                    "tags",
                    ("image_id", "label_set", "label", "score", "model"),
                    [
                        (i, name, labels[c], sc, store.model)
                        for i, c, sc in zip(ids.tolist(), cols.tolist(), scores.tolist(), strict=True)
                    ],
                )
            summary.write_seconds += time.perf_counter() - clock
            np.add.at(counts, cols, 1)
            summary.images += len(chunk_ids)
            summary.tags += len(ids)
            progress.update(task, advance=len(chunk_ids))
    summary.counts = {labels[i]: int(c) for i, c in enumerate(counts) if c}


# --- reading tags --------------------------------------------------------------------------------------


def label_counts(store: Store, label_set: str | None = None) -> list[tuple[str, str, int]]:
    """(label set, label, images) for every label in use, most used first."""
    query = select(Tag.label_set, Tag.label, func.count()).group_by(Tag.label_set, Tag.label)
    if label_set is not None:
        query = query.where(Tag.label_set == label_set)
    with store.session() as s:
        rows = s.execute(query.order_by(Tag.label_set, func.count().desc(), Tag.label)).all()
    if label_set is not None and not rows and label_set not in label_set_names(store):
        raise NotFoundError(
            f"no label set named {label_set!r}; the store has {', '.join(label_set_names(store)) or 'none'}"
        )
    return [(set_name, label, n) for set_name, label, n in rows]


def label_set_names(store: Store) -> list[str]:
    with store.session() as s:
        return list(s.scalars(select(LabelSet.name).order_by(LabelSet.name)))

"""Query texts through another text encoder than the store model's own: a multilingual one that shares its space.

sentence-transformers' `clip-ViT-B-32-multilingual-v1` is a multilingual DistilBERT distilled so that its vector
of a sentence in any of 50+ languages matches the vector `clip-ViT-B-32`'s own text tower gives the English one
(Reimers & Gurevych, 2020). Paired with that image model, a query in German or Japanese searches a store of
English-space vectors. Any sentence-transformers model can be paired the same way, by hub id or directory.

Whether a text model shares the store's space is measured, not assumed from its name: it and the store model's
text tower embed the same English probe sentences, and the mean cosine between the two embeddings of each
sentence (the agreement) must reach MIN_AGREEMENT. A student distilled into the space agrees closely (the real
multilingual student: ~0.9 on such sentences); a model of another space agrees at chance (~0). The store records
each model that passed, with its agreement (table text_models), so the check runs once per store and model.
"""

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select

from indexer.errors import ModelLoadError, ModelMismatchError
from indexer.models.embedder import embed_text_set, l2_normalize
from indexer.models.loading import canonical_name
from indexer.store import Store, TextModel, utcnow

MIN_AGREEMENT = 0.6
PROBES = (
    "a photo of a dog on a beach",
    "a red car parked in the street at night",
    "a cat sleeping on a sofa",
    "sunset over the mountains and a lake",
    "a bride and groom dancing at their wedding",
    "a plate of pasta with salad and bread",
    "a white sneaker on a grey background",
    "a page of printed text",
    "children playing football in a park",
    "a snowy forest in winter",
    "an old church in a small village",
    "a bowl of fresh fruit on a kitchen table",
    "a cyclist riding through the city",
    "a birthday cake with candles",
    "a lighthouse on a rocky coast",
    "a group of friends laughing at a party",
)


class SentenceTextModel:
    """A sentence-transformers text encoder: unit float32 vectors, like `Embedder.embed_texts`."""

    def __init__(self, name: str, device: str):
        from sentence_transformers import SentenceTransformer

        self.name = canonical_name(name)
        try:
            self.model = SentenceTransformer(self.name, device=None if device == "auto" else device)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load text model {name!r}: {e}") from None
        # sentence-transformers 6 renamed the method; 3.x-5.x have only the old name
        width = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(width() or self.embed_texts(["dim"]).shape[1])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), convert_to_numpy=True, show_progress_bar=False)
        return l2_normalize(np.asarray(vectors, dtype=np.float32))


def agreement(candidate, own) -> float:
    """Mean cosine between two encoders' vectors of the same probe sentences."""
    return float(np.mean(np.sum(candidate.embed_texts(PROBES) * embed_text_set(own, PROBES), axis=1)))


def paired_text_model(store: Store, name: str, device: str, own_text_tower) -> SentenceTextModel:
    """The text model `name`, once it is known to share the store's space: recorded in the store, or measured
    against `own_text_tower()` (the store model's embedder, loaded only for the check) and recorded."""
    model = SentenceTextModel(name, device)
    if model.dim != store.dim:
        raise ModelMismatchError(
            f"the text model {model.name} gives {model.dim}-dimensional vectors and the store {store.location} "
            f"holds {store.dim}-dimensional ones from {store.model}: they cannot share a space"
        )
    with store.session() as s:
        if s.get(TextModel, model.name) is not None:
            return model
    measured = agreement(model, own_text_tower())
    if measured < MIN_AGREEMENT:
        raise ModelMismatchError(
            f"the text model {model.name} does not share the vector space of {store.model}, which built the store "
            f"{store.location}: on {len(PROBES)} probe sentences its vectors agree with {store.model}'s own at a "
            f"mean cosine of {measured:.2f} (at least {MIN_AGREEMENT} is needed). Use a text model distilled into "
            f"that space (for clip-ViT-B-32 stores: sentence-transformers/clip-ViT-B-32-multilingual-v1)"
        )
    with store.session() as s:
        s.merge(TextModel(name=model.name, agreement=measured, checked_at=utcnow()))
        s.commit()
    return model


def paired_names(store: Store) -> list[tuple[str, float]]:
    """(name, agreement) of the text models the store has accepted."""
    with store.session() as s:
        return [(r.name, r.agreement) for r in s.scalars(select(TextModel).order_by(TextModel.name))]

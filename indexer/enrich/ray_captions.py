"""Captioning on a Ray cluster: a pool of caption actors (one per GPU, or one per node on CPU), each reading,
decoding and captioning the batches it is given; the driver writes what comes back (captions.py)."""

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from indexer.decode import setup_heif
from indexer.enrich.batches import read_pixels
from indexer.enrich.captioner import caption_decoded, load_captioner
from indexer.runners.ray import MAX_BLOCKS, check_every_node_reads, connect
from indexer.settings import Settings
from indexer.store import Store


class CaptionActor:
    """Ray Data actor: loads the captioner once, then reads, decodes and captions each batch of images it is given.

    Decoding stays in the actor: at the captioner's input size it costs milliseconds next to seconds of generation.
    """

    def __init__(self, name: str, prompt: str, settings: Settings, device: str):
        setup_heif()
        self.captioner = load_captioner(name, device, settings.caption_quantize, settings.caption_attn)
        self.prompt, self.settings = prompt, settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prep, max_pixels = self.captioner.prep, self.settings.max_pixels
        ids = [int(i) for i in batch["id"]]
        images = {i: read_pixels(path, max_pixels, prep) for i, path in zip(ids, batch["path"], strict=True)}
        captions, failures = caption_decoded(self.captioner, images, self.prompt, self.settings)
        return {
            "id": batch["id"],
            "caption": np.array([captions.get(i, "") for i in ids], dtype=object),
            "failure": np.array([failures.get(i, "") for i in ids], dtype=object),
        }


def caption_on_ray(
    store: Store, ids: list[int], name: str, prompt: str, settings: Settings
) -> Iterator[tuple[dict[int, str], dict[int, str]]]:
    """The Ray twin of `captions.caption_here`: (captions, failures) of each batch, from a pool of caption actors."""
    ray = connect(settings.ray)
    paths = store.paths(ids)
    if not paths:  # deleted since they were listed
        return
    # Only the folders that hold images to caption: another indexed folder may be gone, as locally it may.
    roots = [root for root in store.roots() if any(p.startswith(root.rstrip("/") + "/") for p in paths.values())]
    nodes = max(check_every_node_reads(ray, Path(root)) for root in roots)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    items = [{"id": i, "path": paths[i]} for i in ids if i in paths]
    batch_size = settings.caption_batch_size or (16 if gpus else 4)
    images = ray.data.from_items(items, override_num_blocks=min(math.ceil(len(items) / batch_size), MAX_BLOCKS))
    # One actor per GPU, or one per node on CPU, whose generation threads take the node's cores.
    captioned = images.map_batches(
        CaptionActor,
        fn_constructor_kwargs={
            "name": name,
            "prompt": prompt,
            "settings": settings,
            "device": "cuda" if gpus else "cpu",
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=gpus or nodes),
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )
    for batch in captioned.iter_batches(batch_size=None, batch_format="numpy"):
        rows = list(zip(batch["id"].tolist(), batch["caption"], batch["failure"], strict=True))
        yield {i: text for i, text, failure in rows if not failure}, {i: failure for i, _, failure in rows if failure}

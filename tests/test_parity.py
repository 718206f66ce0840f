"""The fast paths compute what the plain transformers model computes, so real weights keep their real quality.

- the decode workers' resize/crop + batch normalisation == the transformers image processor's pixel tensors;
- ONNX Runtime fp32 embeddings == the transformers torch model's (cosine > 0.999), image and text towers;
- opt-in int8 agrees with fp32 (cosine > 0.99);
- JPEG draft (DCT-domain) decoding stays close to a full decode.
"""

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from indexer import onnx_runtime
from indexer.decode import decode_image, resize_and_crop
from indexer.embed import Embedder, l2_normalize, make_embedder, normalize_pixels
from indexer.models import load_model, read_image_prep
from indexer.onnx_runtime import OnnxEmbedder, model_key
from indexer.settings import Settings
from tests.conftest import photo
from tests.model_factory import save_clip

# Odd sizes: portrait, landscape, tiny (upscaled), square, one pixel off square, a web-sized photo.
SIZES = [(317, 211), (211, 317), (37, 23), (3, 5), (224, 224), (225, 224), (1023, 769)]
TEXTS = ["a dog", "a photo of a dog on a beach", "sunset over the mountains and a lake, a red car parked"]


@pytest.fixture(scope="session", params=["clip", "siglip"])
def model_dir(request, clip_dir, siglip_dir):
    return clip_dir if request.param == "clip" else siglip_dir


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalize(a) * l2_normalize(b)).sum(axis=1)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_worker_pixels_match_transformers_processor(model_dir, size):
    processor = AutoImageProcessor.from_pretrained(model_dir)
    prep = read_image_prep(processor)
    img = photo(sum(size), size)
    expected = processor(images=img, return_tensors="np")["pixel_values"]
    ours = normalize_pixels(resize_and_crop(img, prep)[None], prep)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_decode_of_lossless_file_matches_processor(model_dir):
    """The whole worker path (bytes -> decode_image) on a PNG, which has no draft mode."""
    processor = AutoImageProcessor.from_pretrained(model_dir)
    prep = read_image_prep(processor)
    img = photo(5, (403, 301))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    decoded = decode_image(buf.getvalue(), prep, max_pixels=10**8)
    expected = processor(images=img, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(normalize_pixels(decoded.pixels[None], prep), expected, atol=1e-5, rtol=0)


def reference_image_features(model_dir, images: list[Image.Image]) -> np.ndarray:
    """The plain transformers way: image processor, then the torch model."""
    model = AutoModel.from_pretrained(model_dir).eval()
    pixel_values = AutoImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=pixel_values)
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()


def reference_text_features(model_dir, texts: list[str]) -> np.ndarray:
    """The plain transformers way, as each model card shows it (SigLIP: max_length padding, no mask)."""
    model = AutoModel.from_pretrained(model_dir).eval()
    siglip = model.config.model_type == "siglip"
    length = model.config.text_config.max_position_embeddings
    tokens = AutoTokenizer.from_pretrained(model_dir)(
        texts, padding="max_length" if siglip else True, max_length=length, truncation=True, return_tensors="pt"
    )
    if siglip:
        tokens.pop("attention_mask", None)
    with torch.inference_mode():
        out = model.get_text_features(**tokens)
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()


def test_onnx_embeddings_match_transformers(model_dir, onnx_cache):
    embedder = OnnxEmbedder(load_model(str(model_dir), "cpu"), 4, onnx_cache)
    images = [photo(seed, size) for seed, size in enumerate(SIZES[:4])]
    pixels = np.stack([resize_and_crop(img, embedder.prep) for img in images])
    assert cosine(embedder.embed_pixels(pixels), reference_image_features(model_dir, images)).min() > 0.999
    # Texts of different lengths: the exported graph's sequence axis is dynamic.
    for texts in (TEXTS[:1], TEXTS):
        assert cosine(embedder.embed_texts(texts), reference_text_features(model_dir, texts)).min() > 0.999


def test_int8_agrees_with_fp32(model_dir, onnx_cache):
    loaded = load_model(str(model_dir), "cpu")
    fp32 = OnnxEmbedder(loaded, 4, onnx_cache)
    int8 = OnnxEmbedder(loaded, 4, onnx_cache, quantize=True)
    assert int8.runtime == "onnx-int8"
    pixels = np.stack([resize_and_crop(photo(seed, (320, 240)), loaded.prep) for seed in range(8)])
    assert cosine(int8.embed_pixels(pixels), fp32.embed_pixels(pixels)).min() > 0.99


@pytest.mark.parametrize("size", [(2400, 1800), (1800, 2400), (1024, 768)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_jpeg_draft_decode_stays_close_to_full_decode(clip_dir, onnx_cache, size):
    """Draft decoding downscales in the DCT domain before the bicubic resize; measured here: mean error ~0.5/255."""
    embedder = OnnxEmbedder(load_model(str(clip_dir), "cpu"), 4, onnx_cache)
    buf = io.BytesIO()
    photo(11, size).save(buf, "JPEG", quality=90)
    draft = decode_image(buf.getvalue(), embedder.prep, max_pixels=10**8).pixels
    full = resize_and_crop(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), embedder.prep)
    error = np.abs(draft.astype(np.int16) - full.astype(np.int16))
    assert error.mean() < 1.5, f"draft vs full decode: mean pixel error {error.mean():.2f}/255"
    assert np.percentile(error, 99) < 12
    assert cosine(embedder.embed_pixels(draft[None]), embedder.embed_pixels(full[None]))[0] > 0.999


def test_onnx_export_is_cached_per_weights(clip_dir, tmp_path, onnx_cache, monkeypatch):
    loaded = load_model(str(clip_dir), "cpu")
    OnnxEmbedder(loaded, 4, onnx_cache)
    monkeypatch.setattr(onnx_runtime, "export_towers", lambda *a: pytest.fail("re-exported a cached model"))
    OnnxEmbedder(loaded, 4, onnx_cache)  # same name and weights: the cached export
    assert model_key(loaded) == model_key(load_model(str(clip_dir), "cpu"))
    # Same directory, new weights (a fine-tune saved over it): a new key.
    other = load_model(str(save_clip(tmp_path / "other", seed=1)), "cpu")
    other.name = loaded.name
    assert model_key(other) != model_key(loaded)


def test_make_embedder_picks_the_configured_cpu_runtime(clip_dir, onnx_cache):
    settings = Settings(model=str(clip_dir), device="cpu", cache_dir=onnx_cache)
    assert type(make_embedder(str(clip_dir), settings)) is OnnxEmbedder
    torch_settings = settings.model_copy(update={"cpu_runtime": "torch"})
    assert type(make_embedder(str(clip_dir), torch_settings)) is Embedder


def test_export_failure_falls_back_to_torch(clip_dir, tmp_path, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_runtime, "export_towers", broken)
    settings = Settings(model=str(clip_dir), device="cpu", cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        embedder = make_embedder(str(clip_dir), settings)
    assert type(embedder) is Embedder
    assert "exporter exploded" in caplog.text and "torch instead" in caplog.text
    assert embedder.embed_texts(["a dog"]).shape == (1, embedder.dim)


def test_optimizer_failure_keeps_the_unfused_graph(clip_dir, tmp_path, monkeypatch, caplog):
    import onnxruntime.transformers.optimizer as ort_optimizer

    def broken(*args, **kwargs):
        raise RuntimeError("no fusion today")

    monkeypatch.setattr(ort_optimizer, "optimize_model", broken)
    with caplog.at_level(logging.WARNING):
        embedder = OnnxEmbedder(load_model(str(clip_dir), "cpu"), 4, tmp_path)
    assert "no fusion today" in caplog.text
    texts = TEXTS[:2]
    assert cosine(embedder.embed_texts(texts), reference_text_features(clip_dir, texts)).min() > 0.999

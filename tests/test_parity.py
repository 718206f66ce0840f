"""The fast paths compute what the plain transformers model computes, so real weights keep their real quality.

- the decode workers' resize/crop + batch normalisation == the transformers image processor's pixel tensors;
- ONNX Runtime fp32 embeddings == the transformers torch model's (cosine > 0.999), image and text towers;
- the `tokenizers` tokenizer of the export gives the transformers tokenizer's ids;
- opt-in int8 agrees with fp32 (cosine > 0.99 tiny, > 0.995 on a full-size ViT-B/32) on this CPU, and an int8
  tower that does not is replaced by fp32;
- JPEG draft (DCT-domain) decoding stays close to a full decode.
"""

import io
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

from indexer.decode import decode_image, naflex_size, resize_and_crop
from indexer.errors import ModelLoadError
from indexer.models import onnx_runtime
from indexer.models.embedder import image_inputs, l2_normalize
from indexer.models.loading import load_model, read_image_prep
from indexer.models.onnx_export import export_towers
from indexer.models.onnx_runtime import OnnxEmbedder, export_key, find_or_export
from indexer.models.runtimes import make_embedder
from indexer.models.torch_runtime import TorchEmbedder
from indexer.settings import Settings
from tests.support.model_factory import save_clip
from tests.support.photos import photo

# Odd sizes: portrait, landscape, tiny (upscaled), square, one pixel off square, a web-sized photo.
SIZES = [(317, 211), (211, 317), (37, 23), (3, 5), (224, 224), (225, 224), (1023, 769)]
TEXTS = ["a dog", "a photo of a dog on a beach", "sunset over the mountains and a lake, a red car parked"]


MODELS = {"clip": "clip_dir", "siglip": "siglip_dir", "siglip2": "siglip2_dir", "siglip2-naflex": "naflex_dir"}


@pytest.fixture(scope="session", params=list(MODELS))
def model_dir(request):
    return request.getfixturevalue(MODELS[request.param])


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalize(a) * l2_normalize(b)).sum(axis=1)


def onnx_embedder(model_dir, cache, quantize: bool = False) -> OnnxEmbedder:
    """The ONNX embedder as clipdex makes it: exported in a child process, then loaded from the cache."""
    return OnnxEmbedder(find_or_export(str(model_dir), cache), 4, quantize=quantize)


def assert_same_inputs(ours: dict[str, np.ndarray], expected) -> None:
    """Every input the processor makes, equal: pixel values to 1e-5 (measured: at most 1.2e-7, float rounding;
    the resized pixels themselves are identical), NaFlex's patch mask and grid exactly."""
    assert set(ours) == set(expected)
    for key, value in ours.items():
        assert value.shape == expected[key].shape, key
        np.testing.assert_allclose(value, expected[key], atol=1e-5 if key == "pixel_values" else 0, rtol=0)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_worker_pixels_match_transformers_processor(model_dir, size):
    processor = AutoImageProcessor.from_pretrained(model_dir)
    prep = read_image_prep(processor)
    img = photo(sum(size), size)
    assert_same_inputs(image_inputs([resize_and_crop(img, prep)], prep), processor(images=img, return_tensors="np"))


def test_decode_of_lossless_file_matches_processor(model_dir):
    """The whole worker path (bytes -> decode_image) on a PNG, which has no draft mode."""
    processor = AutoImageProcessor.from_pretrained(model_dir)
    prep = read_image_prep(processor)
    img = photo(5, (403, 301))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    decoded = decode_image(buf.getvalue(), prep, max_pixels=10**8)
    assert_same_inputs(image_inputs([decoded.pixels], prep), processor(images=img, return_tensors="np"))


def test_naflex_batch_matches_processor_batch(naflex_dir):
    """Images of different shapes in one batch: each its own patch grid, padded to the same patch count."""
    processor = AutoImageProcessor.from_pretrained(naflex_dir)
    prep = read_image_prep(processor)
    images = [photo(seed, size) for seed, size in enumerate(SIZES)]
    expected = processor(images=images, return_tensors="np")
    assert len({tuple(grid) for grid in expected["spatial_shapes"]}) >= 4  # really different grids
    assert_same_inputs(image_inputs([resize_and_crop(img, prep) for img in images], prep), expected)


def test_naflex_sizes_match_transformers_everywhere():
    """The NaFlex resize target, over thousands of image sizes and three patch budgets."""
    rng = np.random.default_rng(3)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 5000, (1500, 2))] + [(1, 1), (1, 4999), (7000, 3)]
    for patch, budget in ((16, 256), (16, 64), (14, 729)):
        for width, height in sizes:
            theirs = get_image_size_for_max_num_patches(height, width, patch, budget)
            assert naflex_size(width, height, patch, budget) == theirs[::-1], (width, height, patch, budget)


def test_naflex_draft_decode_keeps_the_full_images_patch_grid(naflex_dir):
    """A big JPEG decodes at reduced scale, but gets the grid transformers gives the whole image; EXIF turns too."""
    prep = read_image_prep(AutoImageProcessor.from_pretrained(naflex_dir))
    for size, orientation in (((2400, 1000), 1), ((2400, 1000), 6), ((999, 2401), 1)):
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = orientation
        photo(2, size).save(buf, "JPEG", quality=90, exif=exif)
        width, height = size[::-1] if orientation == 6 else size
        pixels = decode_image(buf.getvalue(), prep, max_pixels=10**8).pixels
        assert pixels.shape[:2] == get_image_size_for_max_num_patches(height, width, 16, 64)


def reference_image_features(model_dir, images: list[Image.Image]) -> np.ndarray:
    """The plain transformers way: image processor, then the torch model."""
    model = AutoModel.from_pretrained(model_dir).eval()
    inputs = AutoImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt")
    with torch.inference_mode():
        out = model.get_image_features(**inputs)
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()


def reference_text_features(model_dir, texts: list[str]) -> np.ndarray:
    """The plain transformers way, as each model card shows it (SigLIP: max_length padding, no mask)."""
    model = AutoModel.from_pretrained(model_dir).eval()
    siglip = model.config.model_type.startswith("siglip")
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
    embedder = onnx_embedder(model_dir, onnx_cache)
    images = [photo(seed, size) for seed, size in enumerate(SIZES[:4])]
    pixels = [resize_and_crop(img, embedder.prep) for img in images]
    assert cosine(embedder.embed_pixels(pixels), reference_image_features(model_dir, images)).min() > 0.999
    # Texts of different lengths: the exported graph's sequence axis is dynamic.
    for texts in (TEXTS[:1], TEXTS):
        assert cosine(embedder.embed_texts(texts), reference_text_features(model_dir, texts)).min() > 0.999


def test_export_tokenizer_matches_transformers(model_dir, onnx_cache):
    """The query path tokenizes with `tokenizers` alone: the same ids (and mask) as the transformers tokenizer."""
    fast = onnx_embedder(model_dir, onnx_cache)
    reference = TorchEmbedder(load_model(str(model_dir), "cpu"), 4)
    texts = [*TEXTS, "UPPER case, punctuation!?", "ünïcödé  spaces", " ".join(["long"] * 200), "x"]
    texts += ["一只狗在海滩上", "Ein Hund am Strand", "собака на пляже"]  # SigLIP 2's text side is multilingual
    for batch in ([texts[0]], texts):
        ours, theirs = fast.tokenize(batch), reference.tokenize(batch)
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key])


def test_int8_agrees_with_fp32(model_dir, onnx_cache):
    fp32 = onnx_embedder(model_dir, onnx_cache)
    int8 = onnx_embedder(model_dir, onnx_cache, quantize=True)
    assert int8.runtime == "onnx-int8"
    pixels = [resize_and_crop(photo(seed, size), fp32.prep) for seed, size in enumerate(SIZES)]
    assert cosine(int8.embed_pixels(pixels), fp32.embed_pixels(pixels)).min() > 0.99
    assert cosine(int8.embed_texts(TEXTS), fp32.embed_texts(TEXTS)).min() > 0.99
    # Both towers really run int8 (the check passed), and the check is recorded for this CPU.
    assert all("int8" in session._model_path for session in int8.sessions.values())
    assert int8.int8_agreement("image") > 0.99 and int8.int8_agreement("text") > 0.99


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_full_size_vit_b32(tmp_path_factory, onnx_cache):
    """A full-size ViT-B/32 (random weights): 12 layers of 768 wide, where int16 saturation would show."""
    model_dir = save_clip(tmp_path_factory.mktemp("models") / "vit-b32", size="vit-b-32")
    fp32 = onnx_embedder(model_dir, onnx_cache)
    int8 = onnx_embedder(model_dir, onnx_cache, quantize=True)
    pixels = [resize_and_crop(photo(seed, size), fp32.prep) for seed, size in enumerate(SIZES)]
    assert cosine(int8.embed_pixels(pixels), fp32.embed_pixels(pixels)).min() > 0.995
    assert cosine(int8.embed_texts(TEXTS), fp32.embed_texts(TEXTS)).min() > 0.995


def test_int8_that_disagrees_on_this_cpu_falls_back_to_fp32(clip_dir, tmp_path, monkeypatch, caplog):
    """The export-time safety net: a check below the bar logs one line and runs fp32; another CPU re-checks."""
    folder = find_or_export(str(clip_dir), tmp_path)
    monkeypatch.setattr(onnx_runtime, "agreement", lambda *args: 0.9)
    with caplog.at_level(logging.WARNING):
        embedder = OnnxEmbedder(folder, 4, quantize=True)
        embedder.embed_texts(["a dog"])
    assert embedder.sessions["text"]._model_path.endswith("text/model.onnx")
    assert "agrees with fp32 only to cosine 0.900" in caplog.text and "using fp32" in caplog.text
    assert embedder.int8_agreement("text") == 0.9
    # Recorded for this CPU: trusted here, re-checked on another one.
    monkeypatch.setattr(onnx_runtime, "agreement", lambda *args: pytest.fail("re-checked on the same CPU"))
    OnnxEmbedder(folder, 4, quantize=True).embed_texts(["a dog"])
    monkeypatch.setattr(onnx_runtime, "cpu_id", lambda: "another CPU [AVX-512]")
    monkeypatch.setattr(onnx_runtime, "agreement", lambda *args: 0.999)
    again = OnnxEmbedder(folder, 4, quantize=True)
    again.embed_texts(["a dog"])
    assert again.sessions["text"]._model_path.endswith("model.int8.onnx")


@pytest.mark.parametrize("size", [(2400, 1800), (1800, 2400), (1024, 768)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_jpeg_draft_decode_stays_close_to_full_decode(clip_dir, onnx_cache, size):
    """Draft decoding downscales in the DCT domain before the bicubic resize; measured here: mean error ~0.5/255."""
    embedder = onnx_embedder(clip_dir, onnx_cache)
    buf = io.BytesIO()
    photo(11, size).save(buf, "JPEG", quality=90)
    draft = decode_image(buf.getvalue(), embedder.prep, max_pixels=10**8).pixels
    full = resize_and_crop(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), embedder.prep)
    error = np.abs(draft.astype(np.int16) - full.astype(np.int16))
    assert error.mean() < 1.5, f"draft vs full decode: mean pixel error {error.mean():.2f}/255"
    assert np.percentile(error, 99) < 12
    assert cosine(embedder.embed_pixels(draft[None]), embedder.embed_pixels(full[None]))[0] > 0.999


def test_onnx_export_is_cached_per_weights(tmp_path, monkeypatch):
    model_dir = save_clip(tmp_path / "model")
    first = find_or_export(str(model_dir), tmp_path / "cache")
    monkeypatch.setattr(onnx_runtime, "run_export", lambda *a: pytest.fail("re-exported a cached model"))
    assert find_or_export(str(model_dir), tmp_path / "cache") == first  # same name and weights: the cached export
    # Same directory, new weights (a fine-tune saved over it): a new key, so a new export.
    key = export_key(str(model_dir))
    save_clip(model_dir, seed=1)
    assert export_key(str(model_dir)) != key


def test_query_path_imports_neither_torch_nor_transformers(clip_dir, onnx_cache):
    """With the export cached, a text query in a fresh process loads only ONNX Runtime and `tokenizers`."""
    find_or_export(str(clip_dir), onnx_cache)
    code = (
        "import sys; from indexer.models.onnx_runtime import OnnxEmbedder, find_or_export; "
        f"e = OnnxEmbedder(find_or_export({str(clip_dir)!r}, {str(onnx_cache)!r}), 4); e.embed_texts(['a dog']); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_make_embedder_picks_the_configured_cpu_runtime(clip_dir, onnx_cache):
    settings = Settings(model=str(clip_dir), device="cpu", cache_dir=onnx_cache, runtime="onnx")
    assert type(make_embedder(str(clip_dir), settings)) is OnnxEmbedder  # auto: tests/test_runtimes.py
    torch_settings = settings.model_copy(update={"runtime": "torch"})
    assert type(make_embedder(str(clip_dir), torch_settings)) is TorchEmbedder


def test_export_failure_falls_back_to_torch(clip_dir, tmp_path, monkeypatch, caplog):
    def broken(*args):  # what run_export raises when the export process fails
        raise onnx_runtime.OnnxExportError("exporter exploded")

    monkeypatch.setattr(onnx_runtime, "run_export", broken)
    settings = Settings(model=str(clip_dir), device="cpu", cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        embedder = make_embedder(str(clip_dir), settings)
    assert type(embedder) is TorchEmbedder
    assert "exporter exploded" in caplog.text and "torch instead" in caplog.text
    assert embedder.embed_texts(["a dog"]).shape == (1, embedder.dim)


def test_a_folder_that_is_no_model_is_a_clear_error_not_a_fallback(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    settings = Settings(device="cpu", cache_dir=tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        make_embedder(str(tmp_path / "not-a-model"), settings)


def test_optimizer_failure_keeps_the_unfused_graph(clip_dir, tmp_path, monkeypatch, caplog):
    import onnxruntime.transformers.optimizer as ort_optimizer

    def broken(*args, **kwargs):
        raise RuntimeError("no fusion today")

    monkeypatch.setattr(ort_optimizer, "optimize_model", broken)
    with caplog.at_level(logging.WARNING):
        export_towers(load_model(str(clip_dir), "cpu"), tmp_path / "export")
    assert "no fusion today" in caplog.text
    embedder = OnnxEmbedder(tmp_path / "export", 4)
    texts = TEXTS[:2]
    assert cosine(embedder.embed_texts(texts), reference_text_features(clip_dir, texts)).min() > 0.999

"""CPU runtimes chosen by measurement (indexer/models/runtime_choice.py), OpenVINO beside ONNX Runtime, the
override, and label sets embedded once per model and runtime.

The exports come from the session's shared cache (exported once for every test file); tests that write a
runtime record or cached vectors work on a private copy of the export, so they never see another test's record.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import indexer.models.cpu
import indexer.models.runtime_choice as runtime_choice
from indexer.enrich.labels import LabelSetRequest, TagOptions
from indexer.models.embedder import Embedder, embed_text_set, l2_normalize
from indexer.models.loading import canonical_name
from indexer.models.onnx_runtime import CHECK_TEXTS, OnnxEmbedder, find_or_export
from indexer.models.runtime_choice import AGREEMENT, RECORD_FILE, measure_tower, skip_reason, tower_choice
from indexer.models.runtimes import AutoEmbedder, export_embedder, make_embedder
from indexer.models.torch_runtime import TorchEmbedder
from indexer.settings import Settings
from search.cli import app
from search.service import Service
from tests.support.photos import write_photos
from tests.support.planted import plant_vectors, unit

pytest.importorskip("openvino")
from indexer.models.openvino_runtime import OpenVinoEmbedder  # noqa: E402 - after the skip: it needs openvino

TEXTS = ["a dog", "a photo of a red car parked by the road at night, seen from across the street", "x"]
NO_BF16 = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})


@pytest.fixture(autouse=True)
def measured_by_default(monkeypatch):
    """The rest of the suite pins ONNX Runtime (conftest.py); here the default is what a user gets: auto."""
    monkeypatch.delenv("CLIPDEX_RUNTIME", raising=False)


@pytest.fixture(params=["clip", "siglip"])
def model_dir(request) -> Path:
    return request.getfixturevalue(f"{request.param}_dir")


@pytest.fixture
def private_cache(tmp_path, clip_dir, cache_dir) -> Path:
    """A cache holding a copy of tiny CLIP's export without any runtime record or kept vectors."""
    shared = find_or_export(str(clip_dir), cache_dir)
    copy = tmp_path / "cache" / "onnx" / shared.name
    shutil.copytree(shared, copy, ignore=shutil.ignore_patterns(RECORD_FILE, "texts", "*.int8.*"))
    return tmp_path / "cache"


def export_of(cache: Path) -> Path:
    (folder,) = (cache / "onnx").iterdir()
    return folder


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalize(a) * l2_normalize(b)).sum(axis=1)


# --- OpenVINO runs the same export ---------------------------------------------------------------------


def test_openvino_fp32_agrees_with_onnx_runtime_on_both_towers(model_dir, cache_dir):
    folder = find_or_export(str(model_dir), cache_dir)
    reference, openvino = OnnxEmbedder(folder, 4), OpenVinoEmbedder(folder, 4, "openvino")
    assert openvino.precision == "f32" and openvino.runtime == "openvino"
    for tower in ("image", "text"):
        inputs = reference.check_inputs(tower)
        run = "image_features" if tower == "image" else "text_features"
        agreement = cosine(getattr(openvino, run)(inputs), getattr(reference, run)(inputs))
        assert agreement.min() >= AGREEMENT, f"{tower} tower: {agreement}"
    # Texts of other lengths than the check's: the sequence axis stays dynamic in OpenVINO too.
    for texts in (TEXTS[:1], TEXTS):
        assert cosine(openvino.embed_texts(texts), reference.embed_texts(texts)).min() >= AGREEMENT


def test_openvino_shares_the_export_reading_with_onnx_runtime(clip_dir, cache_dir):
    """One export, one tokenizer and model facts: the runtimes differ only in how a tower runs."""
    folder = find_or_export(str(clip_dir), cache_dir)
    onnx, openvino = OnnxEmbedder(folder, 4), OpenVinoEmbedder(folder, 4)
    assert openvino.tokenizer is onnx.tokenizer and openvino.info == onnx.info
    for key, value in onnx.tokenize(TEXTS).items():
        np.testing.assert_array_equal(openvino.tokenize(TEXTS)[key], value)


# --- the measurement ------------------------------------------------------------------------------------


def test_the_choice_is_measured_once_recorded_and_reused(private_cache, monkeypatch):
    folder = export_of(private_cache)
    embedder = AutoEmbedder(folder, 4, serving=True)  # a server: its text tower runs in the measured choice
    assert embedder.runtime == "auto"  # nothing measured before a tower runs
    embedder.embed_texts(["a dog"])
    record = json.loads((folder / RECORD_FILE).read_text())
    assert record["cpu"] == indexer.models.cpu.cpu_id() and list(record["towers"]) == ["text"]  # text query: text only
    text = record["towers"]["text"]
    figures = {c["runtime"]: c for c in text["candidates"]}
    assert set(figures) == {"onnx", "openvino", "openvino-bf16"}
    assert figures["onnx"]["per_second"] > 0 and figures["openvino"]["min_cosine"] >= AGREEMENT
    # The fastest that agrees, where it beats ONNX Runtime by the margin: bf16 too on a CPU that has it (it agrees
    # on the tiny model, and a busy machine's timings can favour any of them).
    agreeing = [c["runtime"] for c in text["candidates"] if not c["skipped"] and c["min_cosine"] >= AGREEMENT]
    assert text["runtime"] in agreeing and embedder.runtime == text["runtime"]
    assert text["measured_at"] and text["seconds"] < 30 and text["inputs"] == len(CHECK_TEXTS)

    # Reused: neither this process nor a new embedder measures the text tower again.
    monkeypatch.setattr(runtime_choice, "measure_tower", lambda *a: pytest.fail("measured again on the same CPU"))
    AutoEmbedder(folder, 4, serving=True).embed_texts(["a cat"])
    # Another CPU (or one whose features differ) measures again, and its record replaces this one.
    measured = []
    monkeypatch.setattr(runtime_choice, "measure_tower", lambda *a: measured.append(a) or fake_choice("text"))
    monkeypatch.setattr(runtime_choice, "cpu_id", lambda: "Another CPU [AVX2 AVX512-BF16] x86_64")
    assert AutoEmbedder(folder, 4, serving=True).embed_texts(["a cat"]).shape == (1, 16)
    assert len(measured) == 1
    assert json.loads((folder / RECORD_FILE).read_text())["cpu"] == "Another CPU [AVX2 AVX512-BF16] x86_64"


def test_a_one_shot_text_query_measures_nothing_and_runs_in_onnx_runtime(private_cache, monkeypatch):
    """Outside a server, starting up is a query's cost: ONNX Runtime starts quickest, so no measurement, no OpenVINO."""
    folder = export_of(private_cache)
    monkeypatch.setattr(runtime_choice, "measure_tower", lambda *a: pytest.fail("measured for a one-shot query"))
    embedder = AutoEmbedder(folder, 4)
    embedder.embed_texts(["a dog"])
    assert type(embedder.tower("text")) is OnnxEmbedder and not (folder / RECORD_FILE).exists()


def test_a_label_set_runs_in_the_text_towers_measured_choice_even_in_a_one_shot_command(private_cache, monkeypatch):
    """Hundreds of prompts are worth the measured runtime; the one query beside them is not."""
    folder = export_of(private_cache)
    monkeypatch.setattr(runtime_choice, "measure_tower", lambda *a: fake_choice("text", "openvino"))
    embedder = AutoEmbedder(folder, 4)
    vectors = embed_text_set(embedder, ["a photo of a dog.", "a photo of a cat."])
    assert vectors.shape == (2, 16) and type(embedder.tower("text set")) is OpenVinoEmbedder
    assert list(embedder.tower("text set").text_cache.glob("*.npy"))  # kept in OpenVINO's own folder
    embedder.embed_texts(["a dog"])
    assert type(embedder.tower("text")) is OnnxEmbedder


def fake_choice(tower: str, runtime: str = "onnx") -> runtime_choice.TowerChoice:
    return runtime_choice.TowerChoice(tower, runtime, runtime_choice.cpu_id(), "2026-01-01T00:00:00+00:00", 0.1, 4,
                                      [runtime_choice.Candidate("onnx", 100.0, 1.0)])  # fmt: skip


def test_the_towers_choose_separately_and_newer_runtimes_measure_again(private_cache, monkeypatch):
    folder = export_of(private_cache)
    choices = {"image": fake_choice("image", "openvino"), "text": fake_choice("text", "onnx")}
    monkeypatch.setattr(runtime_choice, "measure_tower", lambda tower, build: choices[tower])
    embedder = AutoEmbedder(folder, 4, serving=True)
    embedder.embed_texts(["a dog"])
    embedder.embed_pixels([np.zeros((224, 224, 3), dtype=np.uint8)])
    assert type(embedder.tower("image")) is OpenVinoEmbedder and type(embedder.tower("text")) is OnnxEmbedder
    assert embedder.runtime == "openvino images, onnx texts"
    # An upgraded runtime package may change which is fastest: its record is stale.
    monkeypatch.setattr(runtime_choice, "runtime_versions", lambda: {"onnxruntime": "99.0", "openvino": None})
    assert runtime_choice.recorded_choices(folder) == []


def test_bf16_is_skipped_not_failed_on_a_cpu_without_it(private_cache, monkeypatch):
    monkeypatch.setattr(indexer.models.cpu, "cpu_flags", lambda: NO_BF16)
    assert skip_reason("openvino-bf16") == "no native bf16 on this CPU (AVX512-BF16 or AMX)"
    folder = export_of(private_cache)
    choice = measure_tower("text", lambda runtime: export_embedder(folder, runtime, 4))
    bf16 = next(c for c in choice.candidates if c.runtime == "openvino-bf16")
    assert bf16.skipped and bf16.per_second is None and not bf16.agrees
    assert choice.runtime in ("onnx", "openvino")
    # With AVX512-BF16 or AMX in the flags it is a candidate.
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(indexer.models.cpu, "cpu_flags", lambda flag=flag: NO_BF16 | {flag})
        assert skip_reason("openvino-bf16") is None


class Disagreeing(OnnxEmbedder):
    """A runtime far faster than any other whose vectors are wrong: it must never be chosen."""

    runtime_name = "openvino"

    def __init__(self, folder):
        super().__init__(folder, 4)
        self.runtime = self.runtime_name

    def run_tower(self, tower, inputs):
        rows = len(next(iter(inputs.values())))
        return np.random.default_rng(0).standard_normal((rows, self.dim)).astype(np.float32)


class FastAndRight(OnnxEmbedder):
    """A runtime whose runs after the first cost nothing (it repeats its answer: the measurement's inputs are fixed)
    and agree with fp32."""

    def __init__(self, folder):
        super().__init__(folder, 4)
        self.runtime = "openvino"
        self.answers = {}

    def run_tower(self, tower, inputs):
        if tower not in self.answers:
            self.answers[tower] = super().run_tower(tower, inputs)
        return self.answers[tower]


@pytest.mark.parametrize("tower", ["image", "text"])
def test_a_candidate_that_disagrees_is_never_chosen(private_cache, tower, monkeypatch):
    folder = export_of(private_cache)
    monkeypatch.setattr(runtime_choice, "CANDIDATES", ("onnx", "openvino"))

    def build(runtime):
        return OnnxEmbedder(folder, 4) if runtime == "onnx" else Disagreeing(folder)

    choice = measure_tower(tower, build)
    fake = next(c for c in choice.candidates if c.runtime == "openvino")
    assert fake.per_second > choice.candidates[0].per_second and fake.min_cosine < AGREEMENT and not fake.agrees
    assert choice.runtime == "onnx"
    assert "below 0.999: not used" in choice.summary()
    # The same candidate, right this time, is chosen: it is the fastest that agrees.
    faster = measure_tower(tower, lambda r: OnnxEmbedder(folder, 4) if r == "onnx" else FastAndRight(folder))
    assert faster.runtime == "openvino"


def test_a_candidate_that_fails_is_skipped_with_its_reason(private_cache, monkeypatch, caplog):
    folder = export_of(private_cache)

    def build(runtime):
        if runtime.startswith("openvino"):  # bf16 too, where the CPU has it: else it would be chosen
            raise RuntimeError("cannot compile this graph\nmore detail")
        return export_embedder(folder, runtime, 4)

    choice = tower_choice(folder, "text", build)
    failed = next(c for c in choice.candidates if c.runtime == "openvino")
    assert failed.skipped == "failed: cannot compile this graph" and choice.runtime == "onnx"
    assert "cannot compile this graph" in caplog.text


# --- the override ---------------------------------------------------------------------------------------


def test_the_runtime_setting_picks_the_runtime(clip_dir, private_cache, monkeypatch):
    settings = Settings(device="cpu", cache_dir=private_cache)
    assert type(make_embedder(str(clip_dir), settings)) is AutoEmbedder
    expected = {"onnx": OnnxEmbedder, "onnx-int8": OnnxEmbedder, "openvino": OpenVinoEmbedder, "torch": TorchEmbedder}
    for runtime, kind in expected.items():
        embedder = make_embedder(str(clip_dir), settings.model_copy(update={"runtime": runtime}))
        assert type(embedder) is kind and embedder.runtime == runtime
    monkeypatch.setenv("CLIPDEX_RUNTIME", "openvino")
    assert type(make_embedder(str(clip_dir), Settings(device="cpu", cache_dir=private_cache))) is OpenVinoEmbedder
    assert not (export_of(private_cache) / RECORD_FILE).exists()  # a named runtime is never measured


def test_the_older_cpu_runtime_setting_still_works(monkeypatch):
    monkeypatch.setenv("CLIPDEX_CPU_RUNTIME", "torch")
    assert Settings().embedding_runtime == "torch"
    assert Settings(runtime="openvino").embedding_runtime == "openvino"  # the new name wins where both are set
    monkeypatch.setenv("CLIPDEX_RUNTIME", "onnx")
    assert Settings().embedding_runtime == "onnx"
    monkeypatch.delenv("CLIPDEX_CPU_RUNTIME")
    monkeypatch.delenv("CLIPDEX_RUNTIME")
    assert Settings().embedding_runtime == "auto"


@pytest.fixture
def store(tmp_path, clip_dir, private_cache, monkeypatch) -> str:
    """40 planted vectors in tiny CLIP's space (two groups), with the private cache as CLIPDEX_CACHE_DIR."""
    monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(private_cache))
    rng = np.random.default_rng(3)
    centres = unit(rng.standard_normal((2, 16)))
    vectors = unit(np.repeat(centres, 20, axis=0) + 0.1 * rng.standard_normal((40, 16)))
    location = str(tmp_path / "store")
    plant_vectors(location, vectors.astype(np.float32), model=canonical_name(str(clip_dir)))
    return location


@pytest.mark.parametrize(("flag", "env"), [("openvino", None), (None, "openvino"), ("onnx", "openvino")])
def test_the_commands_take_the_runtime_flag_and_env(store, monkeypatch, flag, env):
    if env:
        monkeypatch.setenv("CLIPDEX_RUNTIME", env)
    built = []

    def recording(folder, runtime, *args, **kwargs):
        built.append(runtime)
        return export_embedder(folder, runtime, *args, **kwargs)

    monkeypatch.setattr("indexer.models.runtimes.export_embedder", recording)
    runner = CliRunner()
    for command in (["search", "a dog"], ["similar", "1"], ["tag", "--labels", "dog,cat"], ["clusters", "--k", "2"]):
        args = [*command, "--store", store, *(["--runtime", flag] if flag else [])]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert built and set(built) == {flag or env}


def test_an_unknown_runtime_is_one_clear_line(store):
    result = CliRunner().invoke(app, ["search", "a dog", "--store", store, "--runtime", "tensorflow"])
    assert result.exit_code == 2 and "tensorflow" in result.output


# --- what stats and models show -------------------------------------------------------------------------


def test_stats_and_models_show_the_choice_and_its_figures(store, clip_dir, tmp_path):
    runner = CliRunner()
    before = runner.invoke(app, ["stats", "--store", store])
    assert "runtime  auto here: runtimes not measured on this CPU yet" in before.output
    assert runner.invoke(app, ["search", "a dog", "--store", store]).exit_code == 0  # one-shot text: not measured
    assert "runtimes not measured on this CPU yet" in runner.invoke(app, ["stats", "--store", store]).output
    (photo,) = write_photos(tmp_path / "query", 1)
    assert runner.invoke(app, ["similar", str(photo), "--store", store]).exit_code == 0  # the image tower: measured
    after = runner.invoke(app, ["stats", "--store", store, "--json"])
    runtime = json.loads(after.stdout)["runtime"]
    assert runtime["reason"] == "measured fastest agreeing with fp32 on this CPU"
    assert [t["tower"] for t in runtime["towers"]] == ["image"] and runtime["runtime"] in ("onnx", "openvino")
    shown = runner.invoke(app, ["stats", "--store", store]).output
    assert f"runtime  {runtime['runtime']} here: measured" in shown and "image tower: " in shown
    assert "images/s" in shown and "openvino-bf16" in shown

    listed = json.loads(runner.invoke(app, ["models", "--json"]).stdout)["runtimes"]
    assert listed["cpu"] == indexer.models.cpu.cpu_id()
    (image,) = [m for m in listed["measured"] if m["tower"] == "image"]
    assert image["model"] == canonical_name(str(clip_dir))
    table = runner.invoke(app, ["models"]).output
    assert "CPU runtimes measured on this CPU" in table and f"* {image['runtime']}" in table


def test_stats_says_a_named_runtime_is_set_not_measured(store, monkeypatch):
    monkeypatch.setenv("CLIPDEX_RUNTIME", "onnx-int8")
    shown = CliRunner().invoke(app, ["stats", "--store", store]).output
    assert "runtime  onnx-int8 here: set by the runtime setting" in shown


# --- label sets embedded once per model and runtime ----------------------------------------------------


def test_the_vocabulary_and_prompts_are_embedded_once(store, monkeypatch):
    first = Service(Settings(store=store)).clusters(k=2)  # the default vocabulary through the templates
    folder = export_of(Path(Settings().cache_dir))
    kept = list((folder / "texts").rglob("*.npy"))
    assert kept and all(path.parent.name in ("onnx", "openvino") for path in kept)

    def no_text_tower(self, texts):
        raise AssertionError("the text tower ran for a label set it had embedded before")

    monkeypatch.setattr(Embedder, "embed_texts", no_text_tower)
    again = Service(Settings(store=store)).clusters(k=2)  # a new service: nothing remembered in memory
    assert [c.labels for c in again.clusters] == [c.labels for c in first.clusters]
    result = CliRunner().invoke(app, ["clusters", "--k", "2", "--store", store])
    assert result.exit_code == 0, result.output
    # New labels are new texts: the text tower runs for them.
    with pytest.raises(AssertionError, match="had embedded before"):
        Service(Settings(store=store)).clusters(k=2, labels=["a label never embedded"])


def test_tag_prompts_are_embedded_once(store, monkeypatch):
    request = LabelSetRequest(("dog", "cat", "beach"), ("a photo of a {}.",), TagOptions(top_k=1), "animals")
    first = Service(Settings(store=store)).tag(request)
    monkeypatch.setattr(Embedder, "embed_texts", lambda self, texts: pytest.fail("the text tower ran again"))
    second = Service(Settings(store=store)).tag(request)
    assert (second.images, second.tags, second.counts) == (first.images, first.tags, first.counts)


def test_kept_vectors_belong_to_one_runtime_and_one_export(clip_dir, siglip_dir, cache_dir):
    clip = find_or_export(str(clip_dir), cache_dir)
    onnx, openvino = OnnxEmbedder(clip, 4), OpenVinoEmbedder(clip, 4)
    assert onnx.text_cache != openvino.text_cache and onnx.text_cache.parent == openvino.text_cache.parent
    # Another model (or the same directory with new weights: a new export key) has an export folder of its own.
    assert OnnxEmbedder(find_or_export(str(siglip_dir), cache_dir), 4).text_cache.parents[1] != clip

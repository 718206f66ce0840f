"""int8 weights through Quanto and the attention kernel option, on tiny random-weight BLIP-2, LLaVA and BLIP.

Both go through indexer/models/generative.py, which the VLM loader and the captioner share; these tests load through
`load_vlm` and `load_captioner` as the commands do. Measured on the tiny models, int8 weights take 0.74 (BLIP-2,
whose Q-Former transformers keeps in fp32), 0.61 (LLaVA) and 0.60 (BLIP) of fp32's bytes: their embeddings, a
third of the weights at this size, stay in float.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from optimum.quanto import QLinear
from typer.testing import CliRunner

from bench.vlm import weight_bytes
from indexer.enrich.captions import load_captioner
from indexer.errors import ModelLoadError
from indexer.indexing import index_folder
from indexer.models.generative import attention_kwargs
from indexer.settings import Settings
from indexer.store import Caption, open_store
from search.cli import app
from search.vlm import Conversation, GenerationOptions, load_vlm
from tests.support.model_factory import save_blip2, save_blip_vqa, save_llava
from tests.support.photos import photo, write_photos

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only handed to the checks that run before any weight is loaded


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, blip_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quantize-models")
    return {
        "blip-2": save_blip2(root / "tiny-blip2", min_new_tokens=3),
        "chat": save_llava(root / "tiny-llava"),
        "blip-vqa": save_blip_vqa(root / "tiny-blip-vqa"),
        "blip": blip_dir,
    }


def greedy_answer(vlm, max_new_tokens: int = 6) -> str:
    """The VLM's greedy answer about a real photo, at least three tokens long (random weights may stop at once)."""
    vlm.model.generation_config.min_new_tokens = 3
    inputs = vlm.inputs(Conversation(images=[1]), "What is in the picture?", [photo(0, (64, 48))])
    return "".join(vlm.stream(inputs, GenerationOptions(max_new_tokens=max_new_tokens)))


def int8_linears(model: torch.nn.Module) -> list[QLinear]:
    return [m for m in model.modules() if isinstance(m, QLinear) and m.weight._data.dtype == torch.int8]


# --- int8 through Quanto -------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "bar"), [("blip-2", 0.8), ("chat", 0.7)])
def test_int8_vlm_holds_int8_weights_in_less_memory_and_answers(model_dirs, family, bar):
    full = load_vlm(str(model_dirs[family]), device="cpu")
    int8 = load_vlm(str(model_dirs[family]), device="cpu", quantize="int8")
    assert int8_linears(int8.model) and not int8_linears(full.model)
    assert weight_bytes(int8.model) / weight_bytes(full.model) < bar
    assert greedy_answer(int8).strip()


def test_int8_captioner_holds_int8_weights_in_less_memory_and_captions(model_dirs):
    full = load_captioner(str(model_dirs["blip"]), "cpu")
    int8 = load_captioner(str(model_dirs["blip"]), "cpu", quantize="int8")
    assert int8_linears(int8.model) and not int8_linears(full.model)
    assert weight_bytes(int8.model) / weight_bytes(full.model) < 0.7
    pixels = [np.asarray(photo(seed).resize(int8.prep.out_size[::-1])) for seed in range(2)]
    texts = int8.caption(pixels, "a photography of", max_new_tokens=4, beams=1)
    assert len(texts) == 2 and all(texts)


def test_int8_without_quanto_says_what_to_install(model_dirs, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optimum.quanto" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelLoadError, match=r"pip install 'clipdex\[quanto\]'"):
        load_vlm(str(model_dirs["chat"]), device="cpu", quantize="int8")
    with pytest.raises(ModelLoadError, match=r"pip install 'clipdex\[quanto\]'"):
        load_captioner(str(model_dirs["blip"]), "cpu", quantize="int8")


def test_quanto_failing_on_a_model_is_a_clear_error(model_dirs, monkeypatch):
    def refuse(model, **kwargs):
        raise RuntimeError("no kernel for this layer")

    monkeypatch.setattr(transformers.integrations, "replace_with_quanto_layers", refuse)
    with pytest.raises(
        ModelLoadError, match=r"cannot be loaded with int8 weights \(RuntimeError: no kernel.*unquantized"
    ):
        load_vlm(str(model_dirs["blip-2"]), device="cpu", quantize="int8")


def test_bitsandbytes_and_unknown_values_are_clear_errors(model_dirs):
    with pytest.raises(ModelLoadError, match="4bit loading needs a CUDA GPU.*use int8"):
        load_captioner(str(model_dirs["blip"]), "cpu", quantize="4bit")
    with pytest.raises(ModelLoadError, match="8bit loading needs a CUDA GPU"):
        load_vlm(str(model_dirs["chat"]), device="cpu", quantize="8bit")
    with pytest.raises(ModelLoadError, match="unknown quantization 'int4'"):
        load_vlm(str(model_dirs["chat"]), device="cpu", quantize="int4")
    with pytest.raises(ModelLoadError, match="unknown attention 'fast'"):
        load_captioner(str(model_dirs["blip"]), "cpu", attn="fast")


# --- attention kernels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["blip-2", "chat"])
def test_eager_and_sdpa_give_the_same_greedy_answer(model_dirs, family):
    answers = {}
    for attn in ("eager", "sdpa"):
        vlm = load_vlm(str(model_dirs[family]), device="cpu", attn=attn)
        assert vlm.model.config._attn_implementation == attn
        assert vlm.model.config.text_config._attn_implementation == attn  # the language model's too
        answers[attn] = greedy_answer(vlm, max_new_tokens=8)
    assert answers["eager"] == answers["sdpa"] and answers["eager"].strip()


def test_auto_is_sdpa_where_the_model_has_it_else_eager(model_dirs):
    """BLIP's classes reject sdpa in transformers 5; auto falls back to eager instead of failing."""
    assert load_vlm(str(model_dirs["chat"]), device="cpu").model.config._attn_implementation == "sdpa"
    assert load_vlm(str(model_dirs["blip-2"]), device="cpu").model.config._attn_implementation == "sdpa"
    assert load_vlm(str(model_dirs["blip-vqa"]), device="cpu").model.config._attn_implementation == "eager"
    assert load_captioner(str(model_dirs["blip"]), "cpu").model.config._attn_implementation == "eager"
    with pytest.raises(ModelLoadError, match="BlipForConditionalGeneration has no sdpa attention.*eager"):
        load_captioner(str(model_dirs["blip"]), "cpu", attn="sdpa")


def test_auto_takes_flash_attention_only_where_it_can_run(monkeypatch):
    llava, blip2 = transformers.LlavaForConditionalGeneration, transformers.Blip2ForConditionalGeneration
    monkeypatch.setattr("indexer.models.generative.installed", lambda module: True)  # as if flash-attn were installed
    assert attention_kwargs(llava, CUDA, torch.float16, "auto") == {"attn_implementation": "flash_attention_2"}
    assert attention_kwargs(llava, CUDA, torch.float32, "auto") == {}  # flash-attention runs in half precision
    assert attention_kwargs(llava, CPU, torch.float32, "auto") == {}
    assert attention_kwargs(blip2, CUDA, torch.float16, "auto") == {}  # BLIP-2 has no flash-attention
    with pytest.raises(ModelLoadError, match="Blip2ForConditionalGeneration has no flash_attention_2"):
        attention_kwargs(blip2, CUDA, torch.float16, "flash_attention_2")


def test_flash_attention_says_what_is_missing(model_dirs, monkeypatch):
    with pytest.raises(ModelLoadError, match="flash_attention_2 attention kernel needs a CUDA GPU"):
        load_vlm(str(model_dirs["chat"]), device="cpu", attn="flash_attention_2")
    monkeypatch.setattr("indexer.models.generative.installed", lambda module: module != "flash_attn")
    llava = transformers.LlavaForConditionalGeneration
    with pytest.raises(ModelLoadError, match="needs the flash-attn package: pip install flash-attn"):
        attention_kwargs(llava, CUDA, torch.float16, "flash_attention_2")


# --- the commands --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, clip_dir) -> Path:
    root = tmp_path_factory.mktemp("quantize-store")
    write_photos(root / "photos", 2, size=(64, 48))
    settings = Settings(store=root / "store", model=str(clip_dir), device="cpu", cpu_runtime="torch", workers=1)
    index_folder(root / "photos", settings, show_progress=False)
    return root / "store"


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, str]]:
    """(quantize, attn) of every model loaded, recorded on the way to the real loader."""
    from indexer.models import generative as pretrained

    seen = []

    def recording(model_class, name, device, dtype="auto", quantize="none", attn="auto"):
        seen.append((quantize, attn))
        return pretrained.load_pretrained(model_class, name, device, dtype, quantize, attn)

    monkeypatch.setattr("search.vlm.load_pretrained", recording)
    monkeypatch.setattr("indexer.enrich.captioner.load_pretrained", recording)
    return seen


ENV = {"CLIPDEX_DEVICE": "cpu", "CLIPDEX_CPU_RUNTIME": "torch", "CLIPDEX_VLM_MAX_NEW_TOKENS": "4"}


def test_caption_and_ask_pass_quantize_and_attn_to_the_loader(store_dir, model_dirs, loads):
    runner = CliRunner()
    env = {**ENV, "CLIPDEX_STORE": str(store_dir)}
    caption = ["caption", "--model", str(model_dirs["blip"]), "--max-new-tokens", "4", "--beams", "1"]
    result = runner.invoke(app, [*caption, "--quantize", "int8", "--attn", "eager"], env=env)
    assert result.exit_code == 0, result.output
    with open_store(store_dir).session() as s:
        assert s.query(Caption).count() == 2
    ask = ["ask", "1", "What is it?", "--vlm", str(model_dirs["chat"])]
    result = runner.invoke(app, [*ask, "--quantize", "int8", "--attn", "sdpa"], env=env)
    assert result.exit_code == 0, result.output
    assert loads == [("int8", "eager"), ("int8", "sdpa")]


def test_index_caption_passes_the_captioner_options(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("indexer.indexing.index_folder", lambda folder, settings, *a, **options: seen.append(settings))
    args = ["index", str(tmp_path), "--caption", "--caption-quantize", "int8", "--caption-attn", "eager", "--json"]
    CliRunner().invoke(app, args, env=ENV)
    assert [(s.caption_quantize, s.caption_attn) for s in seen] == [("int8", "eager")]


@pytest.mark.parametrize(
    "args",
    [
        ["caption", "--quantize", "int4"],
        ["caption", "--attn", "fast"],
        ["ask", "1", "What?", "--quantize", "fp4"],
        ["chat", "1", "--attn", "flash"],
        ["index", ".", "--caption-quantize", "int4"],
    ],
)
def test_cli_rejects_unknown_values(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Invalid value" in result.output

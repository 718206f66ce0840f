"""Make the model files rclip 3.3.0 loads, with random weights, so rclip runs offline (HF_HUB_OFFLINE=1).

rclip 3.3.0 (rclip/model_download.py) looks in its data folder, $RCLIP_DATADIR (default ~/.local/share/rclip),
and downloads from the hub repo yurijmikhalevich/rclip-models only what is missing there:

    $RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/visual.onnx   input "input"  float32 [N, 3, 256, 256]
    $RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/textual.onnx  input "input"  int64   [N, 77]
    $RCLIP_DATADIR/tokenizer/bpe_simple_vocab_16e6.txt.gz        OpenAI CLIP BPE merges (gzip text)

Each graph has one output (rclip takes the first), float32 [N, 512], which rclip L2-normalises itself. Its
own export (scripts/convert_model.py in rclip's repository) is OpenCLIP's ViT-B-32-256 in fp32, traced with
the TorchScript exporter at opset 18, batch axis dynamic, with no offline graph optimisation: this does the
same. The same folder also holds rclip's index (db.sqlite3); bench/rclip.py links these model files into a
fresh data folder per run.

The architecture is OpenCLIP's ViT-B-32-256 (the datacomp_s34b_b86k checkpoint's, as in its transformers
port laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K): a ViT-B/32 vision tower at 256x256 (64 patches + CLS
= 65 tokens, where the 224x224 OpenAI ViT-B/32 has 50), the 12-layer 512-wide text tower with CLIP's 49,408
token vocabulary, exact GELU, 512-d embeddings. Only the weights are random (and so the token ids are
meaningless), so every figure costs what the real model costs.

The tokenizer file is generated: rclip's SimpleTokenizer reads the first 48,894 merges after a header line
and builds 256 byte tokens, their 256 end-of-word forms, one token per merge and the two specials, so any
48,894 distinct merges give CLIP's real vocabulary size and ids (<start_of_text> 49406, <end_of_text> 49407).
A few common words get whole-word merges, the rest are two-character merges.

The transformers checkpoint of the same weights is saved too (--hf-out), with a small tokenizer and a 256x256
image processor, so that clipdex can run exactly the model rclip runs (bench/rclip.py,
BENCH_RCLIP_CLIPDEX_MODEL).

Usage (from the repository root, in clipdex's venv):
    .venv/bin/python -m bench.rclip_model [--out data/bench/rclip/models] [--hf-out data/bench/models/vit-b32-256]
"""

import argparse
import gzip
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from bench.smoke import DATA, SMOKE, announce, pick
from indexer.models.cpu import cpu_line
from indexer.models.onnx_export import ImageTower, TextTower  # the towers clipdex exports; rclip names the graph inputs
from tests.support.model_factory import TINY_TEXT, TINY_VISION, VIT_B32_TEXT, VIT_B32_VISION

MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"  # rclip.model_download.MODEL_SUBDIR
VISUAL_ONNX, TEXTUAL_ONNX = "visual.onnx", "textual.onnx"
TOKENIZER_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
IMAGE_SIZE, CONTEXT_LENGTH, VOCAB_SIZE, EMBED_DIM = 256, 77, 49408, 512
MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894: what rclip's tokenizer reads (merges[1 : 49152 - 256 - 2 + 1])
SOT, EOT = VOCAB_SIZE - 2, VOCAB_SIZE - 1
OPSET = 18  # as rclip's own export
DEFAULT_OUT = Path("data/bench/rclip/models")
DEFAULT_HF_OUT = Path("data/bench/models/vit-b32-256")
WORDS = "a photo of the dog cat car red street night beach sunset mountain lake food person people".split()


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable character table (as in rclip/utils/tokenizer.py)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    codes = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, codes), strict=True))


def bpe_merges() -> list[tuple[str, str]]:
    """48,894 distinct merges: whole-word merges for WORDS first, then two-character ones, up to the count."""
    merges: list[tuple[str, str]] = []
    made: set[str] = set()  # the token each merge makes: all distinct, so the vocabulary has 49,408 ids

    def add(left: str, right: str) -> None:
        if left + right not in made and len(merges) < MERGES:
            made.add(left + right)
            merges.append((left, right))

    for word in WORDS:  # left to right: "dog" -> (d, o), (do, g</w>)
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            add(pieces[0], pieces[1])
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    chars = list(bytes_to_unicode().values())
    # lower-case letters first, so that ordinary words tokenise into two-letter pieces rather than bytes
    chars.sort(key=lambda c: (not c.isascii() or not c.islower(), c))
    for left in chars:
        for right in chars:
            add(left, right + "</w>")
            add(left, right)
    assert len(merges) == MERGES
    return merges


def write_vocab(path: Path) -> None:
    """The gzip BPE file: a header line, then one "left right" merge per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["#version: 0.2 (random-weight benchmark vocabulary)"] + [f"{a} {b}" for a, b in bpe_merges()]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def build_model(seed: int) -> CLIPModel:
    """OpenCLIP ViT-B-32-256 as a transformers CLIPModel with random weights (fp32, eval)."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=CONTEXT_LENGTH,
            **pick(VIT_B32_TEXT, TINY_TEXT),  # ViT-B/32's widths and depths (a smoke run's tiny ones)
            hidden_act="gelu",
            bos_token_id=SOT,
            eos_token_id=EOT,  # the text is pooled at the first end token, as OpenCLIP's argmax over ids does
            pad_token_id=0,
        ),
        vision_config=dict(
            image_size=IMAGE_SIZE,
            patch_size=32,
            **pick(VIT_B32_VISION, TINY_VISION),
            hidden_act="gelu",
        ),
        projection_dim=EMBED_DIM,
    )
    model = CLIPModel(config).eval()
    model.set_attn_implementation("eager")  # plain MatMul/Softmax attention in the graph, as a traced MHA
    return model


def sample_tokens() -> torch.Tensor:
    """Two token rows as rclip makes them: <start>, a few ids, <end>, zeros."""
    tokens = torch.zeros(2, CONTEXT_LENGTH, dtype=torch.long)
    tokens[0, :3] = torch.tensor([SOT, 320, EOT])
    tokens[1, :5] = torch.tensor([SOT, 539, 1000, 2000, EOT])
    return tokens


def export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript-trace `module` to `path` with rclip's names: input "input", output "output", batch dynamic."""
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks baked in as constants
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(path)


def check(module: torch.nn.Module, example: torch.Tensor, path: Path, dtype: str) -> None:
    """The graph has rclip's input name and type and agrees with torch (batch of 2 and of 3)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), outputs = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and inp.type == dtype, (inp.name, inp.type)
    assert outputs[0].type == "tensor(float)", outputs[0].type
    for batch in (example, torch.cat([example, example[:1]])):
        with torch.inference_mode():
            expected = module(batch).numpy()
        (got,) = session.run(None, {"input": batch.numpy()})
        assert got.shape == (len(batch), EMBED_DIM), got.shape
        diff = float(np.abs(got - expected).max())
        assert diff < 1e-3, f"{path.name} differs from torch by {diff}"
    print(f"  {path.name}: input {inp.name} {inp.type} {inp.shape}, output {outputs[0].shape}, max diff {diff:.1e}")


def save_hf(model: CLIPModel, out: Path) -> None:
    """The same weights for clipdex: checkpoint, a small BPE tokenizer (ids < 300) and a 256x256 processor."""
    from tests.support.model_factory import make_tokenizer

    model.save_pretrained(out)
    make_tokenizer().save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    out, hf_out = pick((DEFAULT_OUT, DEFAULT_HF_OUT), (DATA / "rclip" / "models", DATA / "models" / "vit-b32-256"))
    parser.add_argument("--out", type=Path, default=out, help="rclip data folder to write the models into")
    parser.add_argument("--hf-out", type=Path, default=hf_out, help="transformers copy for clipdex")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", default=SMOKE, help="rebuild files that exist (smoke: always)")
    args = parser.parse_args()
    print(cpu_line())
    announce()

    folder = args.out / MODEL_SUBDIR
    visual, textual, vocab = folder / VISUAL_ONNX, folder / TEXTUAL_ONNX, args.out / TOKENIZER_VOCAB
    hf_done = args.no_hf or (args.hf_out / "model.safetensors").exists()
    if not args.force and visual.exists() and textual.exists() and vocab.exists() and hf_done:
        print(f"rclip models already in {args.out}")
        return
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    write_vocab(vocab)
    print(f"wrote {vocab}")
    model = build_model(args.seed)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    for module, example, path, dtype in (
        (ImageTower(model, ("pixel_values",)), images, visual, "tensor(float)"),
        (TextTower(model), sample_tokens(), textual, "tensor(int64)"),  # no mask: rclip sends none
    ):
        export(module, example, path)
        check(module, example, path, dtype)
    print(f"wrote {folder}")
    if not args.no_hf:
        save_hf(model, args.hf_out)
        print(f"wrote {args.hf_out} (the same weights, for clipdex)")


if __name__ == "__main__":
    main()

"""Run an embedding model's image and text towers in ONNX Runtime, from an export cached on disk.

The export (both towers as ONNX graphs, the tokenizer, the model's facts) is what every CPU runtime runs:
`ExportEmbedder` reads it, `OnnxEmbedder` here and `OpenVinoEmbedder` (openvino_runtime.py) run it, and
`runtime_choice.py` times them on it and records which is fastest on the CPU at hand.

On CPU, ONNX Runtime with its transformer graph optimizer (fused attention) beats torch eager by 1.3x to
2x on this project's 2-core machine (bench/indexing.py, README.md "Performance"). The towers are exported
once per model and weights (`indexer/models/onnx_export.py`, in a child process) into `cache_dir/onnx/<key>/`;
the key is computed from the model's files (names, sizes, mtimes and a sample of their bytes) and the tool
versions, so finding the export costs a few stats, and neither torch nor transformers is imported here.

int8 is opt-in and checked: each quantised tower is compared with its fp32 graph on fixed inputs on the CPU
at hand, and used only if it agrees (quantised kernels differ per CPU feature set).
"""

import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from indexer.decode import ImagePrep
from indexer.errors import ModelLoadError
from indexer.models.cpu import cpu_id
from indexer.models.embedder import Embedder, image_inputs, l2_normalize, load_fast_tokenizer
from indexer.models.loading import ModelInfo
from indexer.settings import cpu_count

log = logging.getLogger(__name__)

EXPORT_VERSION = 5  # bump when the exported graphs or the folder's layout change, so stale caches are not reused
OPSET = 17
MODEL_FILE = "model.json"
TOKENIZER_FILE = "tokenizer.json"
TEXT_CACHE = "texts"  # fixed text sets embedded once per runtime (embedder.py embed_text_set)
MODEL_LOAD_FAILED = "cannot load the model: "  # how the export process says the model itself is the problem
SAMPLE_BYTES = 65_536  # read from each end of every model file for the key: a changed file changes it
# A quantised tower is used only if every check input's vector keeps this cosine to the fp32 one.
AGREEMENT_BAR = 0.99
CHECK_TEXTS = (
    "a photo of a dog",
    "sunset over the mountains and a lake, with a red car parked by the road",
    "a receipt",
    "wedding couple dancing",
)


class OnnxExportError(Exception):
    """The model could not be exported to, optimised for, or loaded by ONNX Runtime."""


def model_files(name: str) -> Path | None:
    """The folder holding a model's files: the directory itself, or a hub model's cached snapshot."""
    path = Path(name)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not downloaded yet: the export downloads it
        return None


def export_key(name: str) -> str:
    """A short hash of the model's name and files and of the versions that shape the exported graphs."""
    h = hashlib.blake2b(digest_size=12)
    versions = [EXPORT_VERSION, OPSET]
    for package in ("torch", "transformers", "onnxruntime"):
        try:
            versions.append(importlib.metadata.version(package))
        except importlib.metadata.PackageNotFoundError:
            versions.append(None)
    h.update(json.dumps([name, versions]).encode())
    folder = model_files(name)
    for path in sorted(folder.rglob("*")) if folder else ():
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        stat = path.stat()
        h.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        with path.open("rb") as f:
            h.update(f.read(SAMPLE_BYTES))
            if stat.st_size > 2 * SAMPLE_BYTES:
                f.seek(-SAMPLE_BYTES, os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()


def export_folder(name: str, cache_dir: Path) -> Path:
    """Where the export of `name` as its files are now lives (it may not exist yet)."""
    return Path(cache_dir) / "onnx" / export_key(name)


def run_export(name: str, cache_dir: Path) -> Path:
    """Export `name` in a child process (torch and the weights never enter this one); the export's folder."""
    command = [sys.executable, "-m", "indexer.models.onnx_export", name, str(cache_dir)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        if last.startswith(MODEL_LOAD_FAILED):  # no runtime can load it: say so, do not fall back to torch
            raise ModelLoadError(last.removeprefix(MODEL_LOAD_FAILED))
        raise OnnxExportError(last)
    return Path(done.stdout.strip().splitlines()[-1])


def find_or_export(name: str, cache_dir: Path) -> Path:
    """The export folder of `name`, exporting it first (once, logged) when there is none."""
    folder = export_folder(name, cache_dir)
    if (folder / MODEL_FILE).exists():
        return folder
    started = time.perf_counter()
    # The one line a first run shows for it: the export's own output (torch, transformers) stays in its process.
    log.warning("preparing the model for this CPU, once: %s", name)
    folder = run_export(name, cache_dir)
    log.info("exported %s to ONNX Runtime in %.0f s, into %s", name, time.perf_counter() - started, folder.parent)
    return folder


def open_session(path: Path, threads: int, prepack: bool = True):
    """An ONNX Runtime CPU session with every graph optimisation on and `threads` intra-op threads.

    `prepack` re-lays the weights for the matrix kernels when the session opens: measured on ViT-B/32 here,
    the image tower runs 22% faster for it; the text tower opens 0.3 s slower and answers 25 ms faster,
    which pays in a server, not in a one-shot query from the command line.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Decode workers share these cores: idle inference threads must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_int8(fp32: Path, int8: Path) -> None:
    """Dynamic int8 quantisation: int8 weights per output channel, uint8 activations per batch at run time.

    reduce_range (7-bit weights) is what keeps it right on every CPU: x86 CPUs without VNNI multiply
    uint8 x int8 with vpmaddubsw, whose 16-bit pair sums saturate at full range (measured on an AVX2-only
    Zen 3: cosine 0.907 to fp32 on a SigLIP; 0.998 with reduce_range, at the same speed on ViT-B/32).
    Per-channel scales win back the bit that reduce_range gives up.
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = int8.with_name(f"{int8.name}.tmp-{os.getpid()}")
    # Shape inference cannot type the fused (com.microsoft) ops' outputs: they are all float32.
    extra = {"DefaultTensorType": TensorProto.FLOAT}
    logging.disable(logging.WARNING)  # the quantizer logs every tensor it cannot type to the root logger
    try:
        quantize_dynamic(
            str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True, extra_options=extra
        )
    finally:
        logging.disable(logging.NOTSET)
    os.replace(tmp, int8)


# (width, height) shapes of the check images: NaFlex models see each as its own patch grid.
CHECK_ASPECTS = ((4, 3), (3, 4), (16, 9), (1, 1), (3, 1), (1, 2), (5, 4), (9, 16))


def check_images(prep: ImagePrep) -> list[np.ndarray]:
    """Fixed photo-like decoded images: smooth random colour fields with edges and noise, the same every time."""
    rng = np.random.default_rng(20261201)
    images = []
    for aspect in CHECK_ASPECTS:
        width, height = prep.target_size(aspect[0] * 300, aspect[1] * 300) if prep.max_patches else prep.out_size[::-1]
        coarse = rng.uniform(0, 255, (4, 4, 3))
        field = np.kron(coarse, np.ones((height // 4 + 1, width // 4 + 1, 1)))[:height, :width]
        images.append(np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8))
    return images


def agreement(session, reference, inputs: dict[str, np.ndarray]) -> float:
    """The lowest cosine between two sessions' outputs over the same inputs."""
    (a,) = session.run(None, inputs)
    (b,) = reference.run(None, inputs)
    return float((l2_normalize(a) * l2_normalize(b)).sum(axis=1).min())


@lru_cache(maxsize=16)
def read_export(folder: Path) -> tuple[ModelInfo, object]:
    """The model facts and tokenizer saved in an export folder, read once per process (an export never changes:
    new files make a new key, so a new folder)."""
    try:
        meta = json.loads((folder / MODEL_FILE).read_text())
        info = ModelInfo.from_json(meta["info"])
        if meta["tokenizer"]:
            return info, load_fast_tokenizer(folder / meta["tokenizer"], info)
        from transformers import AutoTokenizer

        return info, AutoTokenizer.from_pretrained(info.name)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OnnxExportError(f"the ONNX export in {folder} cannot be read ({e}); delete it") from e


class ExportEmbedder(Embedder):
    """The towers of an export folder run by some runtime: the model facts and tokenizer come from the export,
    inputs and normalisation from `Embedder`; a subclass opens a tower (`open_tower`) and runs it (`run_tower`).

    Each tower opens on first use (a text query never opens the image one), once, by the first of concurrent
    callers. Fixed text sets embedded through `embed_text_set` are cached beside the export, per runtime.
    """

    def __init__(self, folder: Path, batch_size: int):
        self.folder = Path(folder)
        info, tokenizer = read_export(self.folder)
        super().__init__(info, tokenizer, batch_size)
        self.sessions: dict[str, object] = {}
        self.lock = threading.Lock()

    @property
    def text_cache(self) -> Path:
        return self.folder / TEXT_CACHE / self.runtime

    def session(self, tower: str):
        """The tower's session (compiled model, ...), opened once."""
        with self.lock:
            if tower not in self.sessions:
                self.sessions[tower] = self.open_tower(tower)
            return self.sessions[tower]

    def open_tower(self, tower: str):
        raise NotImplementedError

    def run_tower(self, tower: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def check_inputs(self, tower: str) -> dict[str, np.ndarray]:
        """Fixed inputs of a tower, the same every time: what runtimes and int8 graphs are checked on."""
        if tower == "image":
            return image_inputs(check_images(self.prep), self.prep)
        return self.tokenize(CHECK_TEXTS)

    def load_image_tower(self) -> None:
        self.session("image")

    def image_features(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.run_tower("image", inputs)

    def text_features(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        return self.run_tower("text", tokens)


class OnnxEmbedder(ExportEmbedder):
    """The model's towers in ONNX Runtime.

    `quantize` asks for dynamic int8 towers (opt-in, approximate); a tower whose int8 graph does not agree with
    its fp32 graph on this CPU runs in fp32, with one line logged. `serving`: the text tower will answer many
    queries, so its session pays for prepacked weights at start (see `open_session`).
    """

    def __init__(self, folder: Path, batch_size: int, quantize: bool = False, serving: bool = False):
        super().__init__(folder, batch_size)
        self.quantize = quantize
        self.serving = serving
        self.runtime = "onnx-int8" if quantize else "onnx"

    def open_tower(self, tower: str):
        int8 = self.checked_int8(tower) if self.quantize else None
        prepack = tower == "image" or self.serving
        return int8 or open_session(self.folder / tower / "model.onnx", cpu_count(), prepack)

    def run_tower(self, tower: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self.session(tower).run(None, inputs)
        return out

    def checked_int8(self, tower: str):
        """The tower's int8 session if it agrees with fp32 on this CPU (checked once per CPU), else None."""
        fp32, int8 = self.folder / tower / "model.onnx", self.folder / tower / "model.int8.onnx"
        record_file = int8.with_suffix(".check.json")
        if not int8.exists():
            quantize_int8(fp32, int8)
        session = open_session(int8, cpu_count())
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
        if record.get("cpu") != cpu_id():  # never checked, or checked on another CPU: check here
            inputs = self.check_inputs(tower)
            record = {"cpu": cpu_id(), "agreement": agreement(session, open_session(fp32, cpu_count()), inputs)}
            tmp = record_file.with_name(f"{record_file.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, record_file)
        if record["agreement"] < AGREEMENT_BAR:
            log.warning(
                "int8 %s tower of %s agrees with fp32 only to cosine %.3f on this CPU (bar %.2f): using fp32",
                tower, self.name, record["agreement"], AGREEMENT_BAR,
            )  # fmt: skip
            return None
        return session

    def int8_agreement(self, tower: str) -> float | None:
        """The recorded int8-vs-fp32 cosine of a tower on this CPU, once it was checked."""
        record_file = self.folder / tower / "model.int8.check.json"
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
        return record.get("agreement") if record.get("cpu") == cpu_id() else None

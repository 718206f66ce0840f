"""Pick the runtime that embeds for a model and the settings: torch on CUDA; on CPU the runtime measured fastest
for each tower on this CPU (runtime_choice.py), or the one the settings name.

What runs (the export of a model's towers) is kept apart from how it runs (a runtime: onnx_runtime.py,
openvino_runtime.py, torch_runtime.py), so a new runtime is one file and one name here.
"""

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.models.embedder import Embedder
from indexer.models.loading import canonical_name, resolve_device
from indexer.settings import Settings

if TYPE_CHECKING:
    from indexer.models.runtime_choice import TowerChoice

log = logging.getLogger(__name__)

EXPORT_RUNTIMES = ("onnx", "onnx-int8", "openvino", "openvino-bf16")  # the runtimes that run the ONNX export


def make_embedder(name: str, settings: Settings, serving: bool = False) -> Embedder:
    """An embedder for `name`: torch fp16 on CUDA; on CPU the measured or configured runtime, torch if the model
    cannot be exported to ONNX.

    The export's runtimes import neither torch nor transformers once the export is cached. `serving`: it will
    answer many text queries (a server), so start-up may take longer for faster answers.
    """
    name, device = canonical_name(name), resolve_device(settings.device)
    runtime = settings.embedding_runtime
    if device == "cpu" and runtime != "torch":
        from indexer.models.onnx_runtime import OnnxExportError, find_or_export

        try:
            folder = find_or_export(name, settings.cache_dir)
        except OnnxExportError as e:
            log.warning("ONNX Runtime is unavailable for %s (%s); embedding with torch instead", name, e)
        else:
            batch_size = settings.batch_size or 16
            if runtime == "auto":
                return AutoEmbedder(folder, batch_size, serving)
            return export_embedder(folder, runtime, batch_size, serving)
    return torch_embedder(name, device, settings)


@dataclass
class RuntimeStatus:
    """Which runtime embeds for a model here and why, without loading, exporting or measuring anything."""

    runtime: str  # "onnx", "openvino", ..., "openvino images, onnx texts"; "auto" while not measured here
    reason: str
    towers: list["TowerChoice"] = field(default_factory=list)  # the measured choices, where measured

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "reason": self.reason, "towers": [t.to_json() for t in self.towers]}


def runtime_status(name: str, settings: Settings) -> RuntimeStatus:
    """What `make_embedder` would run `name` with on this machine, and why (clipdex stats shows it)."""
    from indexer.models.onnx_runtime import MODEL_FILE, export_folder
    from indexer.models.runtime_choice import recorded_choices

    if resolve_device(settings.device) == "cuda":
        return RuntimeStatus("torch", "on CUDA the model runs in torch (fp16)")
    runtime = settings.embedding_runtime
    if runtime != "auto":
        setting = "runtime" if "runtime" in settings.model_fields_set else "cpu_runtime"
        return RuntimeStatus(runtime, f"set by the {setting} setting (CLIPDEX_{setting.upper()}, or a flag)")
    folder = export_folder(canonical_name(name), settings.cache_dir)
    if not (folder / MODEL_FILE).exists():
        return RuntimeStatus("auto", "not exported for CPU yet: exported, then runtimes measured, on first use")
    towers = recorded_choices(folder)
    if not towers:
        return RuntimeStatus("auto", "runtimes not measured on this CPU yet: measured on first use")
    chosen = {t.runtime for t in towers}
    runtime = chosen.pop() if len(chosen) == 1 else ", ".join(f"{t.runtime} {t.tower}s" for t in towers)
    reason = "measured fastest agreeing with fp32 on this CPU"
    if any(t.tower == "text" and t.runtime != "onnx" for t in towers):
        reason += " (the text tower's choice in clipdex serve and for label sets; one-shot queries embed text in onnx)"
    return RuntimeStatus(runtime, reason, towers)


def export_embedder(folder: Path, runtime: str, batch_size: int, serving: bool = False):
    """An embedder running the export in `folder` with one of EXPORT_RUNTIMES."""
    if runtime in ("onnx", "onnx-int8"):
        from indexer.models.onnx_runtime import OnnxEmbedder

        return OnnxEmbedder(folder, batch_size, quantize=runtime == "onnx-int8", serving=serving)
    if runtime in ("openvino", "openvino-bf16"):
        from indexer.models.openvino_runtime import OpenVinoEmbedder

        return OpenVinoEmbedder(folder, batch_size, runtime)
    raise ValueError(f"no runtime named {runtime!r} runs an export; one of {', '.join(EXPORT_RUNTIMES)}")


def torch_embedder(name: str, device: str, settings: Settings) -> Embedder:
    from indexer.models.loading import load_model
    from indexer.models.torch_runtime import TorchEmbedder

    loaded = load_model(name, device)
    return TorchEmbedder(loaded, settings.batch_size or (256 if loaded.device.type == "cuda" else 16))


class AutoEmbedder(Embedder):
    """Each tower run by the runtime measured fastest for it on this CPU, chosen on the tower's first use (a text
    query measures and opens only the text tower). The choice is recorded beside the export (runtime_choice.py).

    Text outside a server (`serving` false) runs in ONNX Runtime, unmeasured: a one-shot command answers a query or
    two, so starting up is its cost, and ONNX Runtime starts quickest (measured on ViT-B/32 here: a cold
    `clipdex search` took 0.83 s in ONNX Runtime, 1.33 s in OpenVINO, whose import alone takes about a second).
    Sets of texts (label prompts, the cluster vocabulary: hundreds to thousands) run in the text tower's measured
    choice even then: on the Intel Xeon with AMX the 1,145 prompts of the default cluster vocabulary took 17.1 s in
    ONNX Runtime and 2.7 s in OpenVINO bf16.
    """

    def __init__(self, folder: Path, batch_size: int, serving: bool = False):
        from indexer.models.onnx_runtime import read_export

        self.folder = Path(folder)
        info, tokenizer = read_export(self.folder)
        super().__init__(info, tokenizer, batch_size)
        self.serving = serving
        self.towers: dict[str, Embedder] = {}  # tower -> the embedder of its chosen runtime
        self.lock = threading.Lock()

    def build(self, runtime: str) -> Embedder:
        return export_embedder(self.folder, runtime, self.batch_size, self.serving)

    def tower(self, tower: str) -> Embedder:
        """The embedder that runs `tower`: its recorded choice, or measured now; towers on one runtime share it."""
        with self.lock:
            if tower not in self.towers:
                from indexer.models.runtime_choice import REFERENCE, tower_choice

                if tower == "text" and not self.serving:
                    runtime = REFERENCE
                else:  # "text set": the text tower's choice
                    runtime = tower_choice(self.folder, tower.split()[0], self.build).runtime
                same = [e for e in self.towers.values() if e.runtime == runtime]
                self.towers[tower] = same[0] if same else self.build(runtime)
            return self.towers[tower]

    @property
    def runtime(self) -> str:
        """The chosen runtime, or "openvino images, onnx texts" when the towers differ ("auto" before either runs)."""
        chosen = {tower: e.runtime for tower, e in self.towers.items()}
        if len(set(chosen.values())) == 1:
            return next(iter(chosen.values()))
        return ", ".join(f"{runtime} {tower}s" for tower, runtime in sorted(chosen.items())) or "auto"

    def load_image_tower(self) -> None:
        self.tower("image").load_image_tower()

    def text_set_embedder(self) -> Embedder:
        return self.tower("text set")

    def image_features(self, inputs):
        return self.tower("image").image_features(inputs)

    def text_features(self, tokens):
        return self.tower("text").text_features(tokens)

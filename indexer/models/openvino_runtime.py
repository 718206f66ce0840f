"""Run an embedding model's towers in OpenVINO, from the same ONNX export ONNX Runtime runs.

OpenVINO reads the export's graphs as they are (ONNX Runtime's fused Attention, SkipLayerNormalization and GELU
ops included) and compiles them for the CPU at hand. Its bf16 mode is where it pays most: on a CPU that multiplies
bfloat16 in hardware (AVX512-BF16, AMX) it ran a ViT-B/32 image tower 4.5x faster than ONNX Runtime fp32 at a
cosine of 0.99995 to it (issue 26). On other CPUs a bf16 request would run fp32 (or emulate bf16 slowly), so
the bf16 runtime is only a candidate where `native_bf16()` says so (runtime_choice.py).

fp32 is asked for explicitly: OpenVINO's own default on a bf16-capable CPU is bf16.
"""

import logging
import threading
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from indexer.errors import ModelLoadError
from indexer.models.cpu import native_bf16
from indexer.models.onnx_runtime import ExportEmbedder
from indexer.settings import cpu_count

log = logging.getLogger(__name__)

PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}  # runtime name -> INFERENCE_PRECISION_HINT


def require_openvino() -> None:
    """ModelLoadError, saying what to install, where the openvino package is missing."""
    if find_spec("openvino") is None:
        raise ModelLoadError(
            "the OpenVINO runtime needs the openvino package: pip install 'clipdex[openvino]' (or another runtime)"
        )


class OpenVinoEmbedder(ExportEmbedder):
    """The export's towers compiled by OpenVINO for this CPU, fp32 (`runtime` "openvino") or bf16
    ("openvino-bf16"), each compiled on first use.

    A compiled model answers concurrent callers through one infer request per thread (a request is not
    thread-safe; the compiled model is).
    """

    def __init__(self, folder: Path, batch_size: int, runtime: str = "openvino"):
        require_openvino()
        super().__init__(folder, batch_size)
        if runtime not in PRECISIONS:
            raise ValueError(f"not an OpenVINO runtime: {runtime!r}")
        self.runtime = runtime
        self.precision = PRECISIONS[runtime]
        if self.precision == "bf16" and not native_bf16():
            log.warning("this CPU has no native bf16 (AVX512-BF16 or AMX): OpenVINO bf16 will not run faster here")
        self.requests = threading.local()

    def open_tower(self, tower: str):
        config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time uses every core, as ONNX Runtime's session does
            "INFERENCE_NUM_THREADS": cpu_count(),
        }
        import openvino  # here: importing it takes about a second, which only a run in OpenVINO should pay

        return openvino.Core().compile_model(str(self.folder / tower / "model.onnx"), "CPU", config)

    def run_tower(self, tower: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self.requests, tower, None)
        if request is None:
            request = self.session(tower).create_infer_request()
            setattr(self.requests, tower, request)
        return request.infer(inputs)[0]

"""Which CPU runtime runs each tower of a model on this CPU: measured on first use, recorded beside the export.

The fastest runtime differs per CPU (issue 26, a Xeon with AMX, ViT-B/32 image tower: ONNX Runtime fp32 23 images/s,
OpenVINO fp32 28, OpenVINO bf16 106), so it is measured rather than configured. On a tower's first use on a CPU,
every candidate runs the tower on the same fixed inputs (the int8 check's images and texts, onnx_runtime.py):
- its vectors are compared with ONNX Runtime fp32's, the reference: a candidate is eligible only if every input's
  vector keeps a cosine of at least AGREEMENT to the reference's (no ranking can tell such vectors apart);
- it is timed: one warm-up run (which opens the tower and gives the vectors), then runs for TIME_BUDGET seconds
  (at least one, at most MAX_RUNS), the fastest run counting.
The fastest eligible candidate is chosen; another runtime replaces the reference only if MARGIN faster, so timing
noise cannot flip a choice that buys nothing. A candidate that fails to load or run is skipped, and said why.

Candidates: ONNX Runtime fp32, OpenVINO fp32, and OpenVINO bf16 where the CPU multiplies bf16 in hardware (elsewhere
skipped, not failed). Not candidates: ONNX Runtime int8, approximate by design and opt-in with its own 0.99 check;
torch, which costs seconds of imports and weight loading to try and was slower than OpenVINO where measured.

The record (RECORD_FILE in the export folder) keeps, per tower, the choice, every candidate's rate and lowest cosine,
when and how long it was measured, for the CPU (cpu.py cpu_id) and runtime versions it was made with: a record from
another CPU, or from other versions of the runtimes, is measured again.
"""

import importlib.metadata
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from indexer.models.cpu import cpu_id, native_bf16
from indexer.models.embedder import l2_normalize
from indexer.models.onnx_runtime import MODEL_FILE, ExportEmbedder, read_export

log = logging.getLogger(__name__)

REFERENCE = "onnx"
CANDIDATES = ("onnx", "openvino", "openvino-bf16")
AGREEMENT = 0.999
MARGIN = 1.05
TIME_BUDGET = 0.3  # seconds of timed runs per candidate and tower
MAX_RUNS = 5
RECORD_FILE = "runtime.json"
VERSIONED = ("onnxruntime", "openvino")  # packages whose version change makes a record stale
UNITS = {"image": "images/s", "text": "texts/s"}


@dataclass
class Candidate:
    """One runtime's figures on a tower: its rate and its lowest cosine to the reference, or why it was skipped."""

    runtime: str
    per_second: float | None = None  # images or texts embedded per second
    min_cosine: float | None = None
    skipped: str | None = None

    @property
    def agrees(self) -> bool:
        return self.skipped is None and self.min_cosine is not None and self.min_cosine >= AGREEMENT


@dataclass
class TowerChoice:
    """The runtime chosen for a tower on a CPU, with what it was chosen from."""

    tower: str  # "image" or "text"
    runtime: str
    cpu: str
    measured_at: str  # ISO 8601, UTC
    seconds: float  # what measuring cost
    inputs: int  # images or texts per timed run
    candidates: list[Candidate] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> "TowerChoice":
        return cls(**{**data, "candidates": [Candidate(**c) for c in data["candidates"]]})

    def to_json(self) -> dict:
        return asdict(self) | {"summary": self.summary()}

    def summary(self) -> str:
        """One line: the choice, each candidate's figures, when it was measured."""
        unit = UNITS.get(self.tower, "/s")
        figures = []
        for c in self.candidates:
            if c.skipped:
                figures.append(f"{c.runtime} skipped: {c.skipped}")
            elif c.runtime == REFERENCE:
                figures.append(f"{c.runtime} {c.per_second:.1f} {unit}")
            else:
                verdict = "" if c.agrees else f", below {AGREEMENT}: not used"
                figures.append(f"{c.runtime} {c.per_second:.1f} {unit} at cosine {c.min_cosine:.5f}{verdict}")
        return f"{self.tower} tower: {self.runtime} ({'; '.join(figures)}; measured {self.measured_at[:10]})"


def skip_reason(runtime: str) -> str | None:
    """Why a candidate cannot run here (None: it can)."""
    if runtime.startswith("openvino") and find_spec("openvino") is None:
        return "the openvino package is not installed (pip install 'clipdex[openvino]')"
    if runtime == "openvino-bf16" and not native_bf16():
        return "no native bf16 on this CPU (AVX512-BF16 or AMX)"
    return None


def time_tower(embedder: ExportEmbedder, tower: str, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """The tower's unit vectors of `inputs` and its best rate over them (inputs per second)."""
    run = embedder.image_features if tower == "image" else embedder.text_features
    vectors = l2_normalize(run(inputs))  # the warm-up: opens the tower, compiles for these shapes
    best, spent, runs = math.inf, 0.0, 0
    while runs < 1 or (spent < TIME_BUDGET and runs < MAX_RUNS):
        clock = time.perf_counter()
        run(inputs)
        elapsed = time.perf_counter() - clock
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return vectors, len(vectors) / max(best, 1e-9)


def measure_tower(tower: str, build: Callable[[str], ExportEmbedder]) -> TowerChoice:
    """Time every candidate on the tower, check it against the reference, choose (see the module docstring).

    `build(runtime)` makes a fresh embedder of the export for a runtime; the candidates are dropped afterwards.
    """
    started = time.perf_counter()
    reference = build(REFERENCE)
    inputs = reference.check_inputs(tower)
    expected, rate = time_tower(reference, tower, inputs)
    candidates = [Candidate(REFERENCE, rate, 1.0)]
    for runtime in CANDIDATES:
        if runtime == REFERENCE:
            continue
        reason = skip_reason(runtime)
        if reason is None:
            try:
                vectors, rate = time_tower(build(runtime), tower, inputs)
            except Exception as e:  # a runtime that cannot run this graph must not stop embedding: skip it
                reason = f"failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                log.warning("runtime %s cannot run the %s tower (%s); skipping it", runtime, tower, e)
            else:
                cosine = float((vectors * expected).sum(axis=1).min())
                candidates.append(Candidate(runtime, rate, cosine))
                continue
        candidates.append(Candidate(runtime, skipped=reason))
    best = max((c for c in candidates if c.agrees), key=lambda c: c.per_second)
    chosen = best if best.per_second >= MARGIN * candidates[0].per_second else candidates[0]
    return TowerChoice(
        tower=tower,
        runtime=chosen.runtime,
        cpu=cpu_id(),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 3),
        inputs=len(expected),
        candidates=candidates,
    )


def runtime_versions() -> dict[str, str | None]:
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def read_record(folder: Path) -> dict:
    """The export's record if it was made on this CPU with these runtime versions, else an empty one for here."""
    fresh = {"cpu": cpu_id(), "versions": runtime_versions(), "towers": {}}
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return fresh
    if not isinstance(record, dict) or {k: record.get(k) for k in ("cpu", "versions")} != {
        k: fresh[k] for k in ("cpu", "versions")
    }:
        return fresh
    return record


def recorded_choices(folder: Path) -> list[TowerChoice]:
    """The towers' recorded choices valid here (this CPU, these versions), image tower first."""
    towers = read_record(folder).get("towers", {})
    try:
        return [TowerChoice.from_json(towers[t]) for t in ("image", "text") if t in towers]
    except (TypeError, KeyError):  # a record of another layout: measured again on next use
        return []


def tower_choice(folder: Path, tower: str, build: Callable[[str], ExportEmbedder]) -> TowerChoice:
    """The recorded choice for a tower on this CPU, or a new measurement, recorded (logged once)."""
    recorded = {c.tower: c for c in recorded_choices(folder)}
    if tower in recorded:
        return recorded[tower]
    choice = measure_tower(tower, build)
    name = read_export(folder)[0].name
    # Shown by `clipdex models` and `clipdex stats`; a first run's output stays the one line of preparing the model.
    log.info("first use of %s on this CPU, runtimes measured (once): %s", name, choice.summary())
    record = read_record(folder)  # again: another process may have recorded the other tower meanwhile
    if not isinstance(record.get("towers"), dict):
        record["towers"] = {}
    record["towers"][tower] = asdict(choice)
    tmp = folder / f"{RECORD_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / RECORD_FILE)
    return choice


def measured_here(cache_dir: Path) -> list[tuple[str, TowerChoice]]:
    """(model, tower choice) of every export in the cache measured on this CPU, the newest export of a model only."""
    newest: dict[str, tuple[str, list[TowerChoice]]] = {}
    for record_file in sorted(Path(cache_dir).glob(f"onnx/*/{RECORD_FILE}")):
        choices = recorded_choices(record_file.parent)
        try:
            name = json.loads((record_file.parent / MODEL_FILE).read_text())["info"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        when = max((c.measured_at for c in choices), default="")
        if choices and when > newest.get(name, ("", []))[0]:
            newest[name] = (when, choices)
    return [(name, choice) for name, (_, choices) in sorted(newest.items()) for choice in choices]

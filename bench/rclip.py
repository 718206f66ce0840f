"""clipdex against rclip 3.3.0 on this machine, both from the command line, offline, with random-weight models.

For each folder of images, with the two tools alternating one measurement at a time (who goes first swaps from
one folder to the next, so a drift in machine load hits both alike):
  (a) indexing into an empty index: wall time, and peak memory of the whole process tree (RSS and PSS summed
      over the tool's process and all its children, polled from /proc every POLL_S seconds),
  (b) the same command again with nothing changed,
  (c) a cold text query in a fresh process, median of QUERIES runs.

rclip runs from its own venv (data/rclip-venv, made by bench/rclip_env.sh) with the files that
bench/rclip_model.py makes: OpenCLIP's ViT-B-32-256, rclip's model, with random weights. Each rclip run gets
a fresh data folder ($RCLIP_DATADIR: rclip keeps its index db.sqlite3 there, beside the models) with the
model files linked in. rclip has no index-only command: it indexes the current directory and then searches
it, so its indexing figures include loading the text tower and one query (`rclip -t 1 QUERY`); its cold
query is `rclip --no-indexing QUERY` (which still opens and reads its index, as clipdex's search does).

clipdex runs `clipdex index DIR --store STORE --model MODEL` and `clipdex search QUERY --store STORE`, with
CLIPDEX_CACHE_DIR=data/bench/cache. Its default MODEL is data/bench/models/vit-b32-256, the very weights rclip
runs (256x256, 65 tokens per image, CLIP's 49,408-token vocabulary): like for like.
BENCH_RCLIP_CLIPDEX_MODEL=data/bench/models/vit-b32 runs the tests' random ViT-B/32 (224x224, 50 tokens per
image, a 300-token vocabulary) instead, which favours clipdex. Both tools' first run (clipdex's one-off ONNX
export, page cache) is an untimed warm-up.

Environment: BENCH_RCLIP_DIRS (folders, separated by ":"; default: 150 web-sized 1024x768 JPEGs and 5 small
ones, generated once under data/bench/rclip/), BENCH_RCLIP_QUERIES (default 5), BENCH_RCLIP_CLIPDEX_MODEL.
Run: .venv/bin/python -m bench.rclip
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "bench"
RCLIP_VENV = ROOT / "data" / "rclip-venv"
RCLIP = RCLIP_VENV / "bin" / "rclip"
RCLIP_MODELS = DATA / "rclip" / "models"  # bench/rclip_model.py's default --out
RCLIP_MODEL_FILES = ("ViT-B-32-256-datacomp_s34b_b86k", "tokenizer")  # what each fresh RCLIP_DATADIR links to
CLIPDEX = ROOT / ".venv" / "bin" / "clipdex"
PYTHON = ROOT / ".venv" / "bin" / "python"
CLIPDEX_MODEL = Path(os.environ.get("BENCH_RCLIP_CLIPDEX_MODEL") or DATA / "models" / "vit-b32-256").resolve()
QUERIES = int(os.environ.get("BENCH_RCLIP_QUERIES", "5"))
QUERY = "a dog"
POLL_S = 0.05
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
# Both tools offline; clipdex on CPU with its export cache under data/bench.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "CLIPDEX_CACHE_DIR": str(DATA / "cache"),
    "CLIPDEX_DEVICE": "cpu",
}


# --- setup ---------------------------------------------------------------------------------------------


def cpu_info() -> str:
    """CPU model, cores and the SIMD / matrix flags that decide which kernels ONNX Runtime picks."""
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    cores = len(os.sched_getaffinity(0))
    return f"{model}, {cores} cores; " + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in CPU_FLAGS)


def ensure_setup() -> None:
    """rclip's venv, rclip's random-weight models and clipdex's model, each made only when missing."""
    if not RCLIP.exists():
        subprocess.run(["bash", str(ROOT / "bench" / "rclip_env.sh")], check=True, cwd=ROOT)
    if not all((RCLIP_MODELS / name).exists() for name in RCLIP_MODEL_FILES):
        subprocess.run([str(PYTHON), "-m", "bench.rclip_model"], check=True, cwd=ROOT)
    if not (CLIPDEX_MODEL / "config.json").exists():
        if CLIPDEX_MODEL.name == "vit-b32-256":  # made by bench/rclip_model.py with rclip's weights
            subprocess.run([str(PYTHON), "-m", "bench.rclip_model", "--force"], check=True, cwd=ROOT)
        else:
            from tests.support.model_factory import save_clip

            save_clip(CLIPDEX_MODEL, size="vit-b32")


def make_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    """`count` distinct photo-like JPEGs (smooth colour fields, edges and noise), made once.

    Distinct bytes matter: rclip reuses the vector of a file whose hash it has already indexed.
    """
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(count):
        coarse = rng.uniform(0, 255, (6, 8, 3))
        field = np.kron(coarse, np.ones((height // 6 + 1, width // 8 + 1, 1)))[:height, :width]
        pixels = np.clip(field + rng.normal(0, 10, field.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=90)
    return folder


def folders() -> list[Path]:
    if os.environ.get("BENCH_RCLIP_DIRS"):
        return [Path(d).resolve() for d in os.environ["BENCH_RCLIP_DIRS"].split(":") if d]
    return [
        make_images(DATA / "rclip" / "web-1024x768", 150, (1024, 768), seed=1),
        make_images(DATA / "rclip" / "small-320x240", 5, (320, 240), seed=2),
    ]


# --- measuring -----------------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc/PID/task/TID/children."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:  # the process ended meanwhile
            pass
    return pids


def memory(pids: list[int]) -> tuple[int, int]:
    """RSS and PSS summed over `pids`, in bytes (PSS splits shared pages between the processes sharing them)."""
    rss = pss = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
    return rss, pss


def measure(command: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run `command` to the end: wall seconds, peak summed RSS and PSS of its process tree, its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        peak_rss = peak_pss = 0
        while proc.poll() is None:
            rss, pss = memory(tree(proc.pid))
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"s": seconds, "rss": peak_rss, "pss": peak_pss, "out": stdout}


class Rclip:
    """rclip with a fresh data folder (index) per benchmark run, the model files linked in."""

    name = "rclip"

    def __init__(self, folder: Path, scratch: Path):
        self.folder = folder
        self.datadir = scratch / "rclip-data"
        self.datadir.mkdir()
        for name in RCLIP_MODEL_FILES:
            (self.datadir / name).symlink_to(RCLIP_MODELS / name)
        self.env = {**ENV, "RCLIP_DATADIR": str(self.datadir)}

    def index(self) -> dict:  # rclip indexes the current directory, then runs the query
        return measure([str(RCLIP), "-t", "1", QUERY], self.folder, self.env)

    def query(self) -> dict:
        result = measure([str(RCLIP), "--no-indexing", "-f", "-t", "10", QUERY], self.folder, self.env)
        assert result["out"].strip(), "rclip found nothing"
        return result


class Clipdex:
    """clipdex with a fresh store per benchmark run."""

    name = "clipdex"

    def __init__(self, folder: Path, scratch: Path):
        self.folder = folder
        self.store = scratch / "clipdex-store"

    def index(self) -> dict:
        command = [str(CLIPDEX), "index", str(self.folder), "--store", str(self.store), "--model", str(CLIPDEX_MODEL)]
        return measure(command, ROOT, ENV)

    def query(self) -> dict:
        result = measure([str(CLIPDEX), "search", QUERY, "--store", str(self.store), "--json"], ROOT, ENV)
        assert result["out"].strip() not in ("", "[]"), "clipdex found nothing"
        return result


def warm_up(folder: Path) -> None:
    """One untimed index of `folder` with each tool: clipdex's one-off ONNX export, the model files into page cache."""
    with tempfile.TemporaryDirectory(prefix="bench-rclip-warm-") as scratch:
        for tool in (Rclip(folder, Path(scratch)), Clipdex(folder, Path(scratch))):
            print(f"warm-up: {tool.name} index {folder.name}", flush=True)
            tool.index()


# --- report --------------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def row(label: str, a: float, b: float, unit: str) -> None:
    """One figure for both tools and the clipdex/rclip ratio (below 1: clipdex is faster or smaller)."""
    show = (lambda x: f"{x:.2f} s") if unit == "s" else mb
    print(f"  {label:<28} {show(a):>12} {show(b):>12} {b / a:>14.2f}")


def bench_folder(folder: Path, rclip_first: bool) -> None:
    count = sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    with tempfile.TemporaryDirectory(prefix="bench-rclip-") as tmp:
        scratch = Path(tmp)
        tools = [Rclip(folder, scratch), Clipdex(folder, scratch)]
        order = tools if rclip_first else tools[::-1]
        print(f"\n{folder} ({count} images), {order[0].name} first; load avg {os.getloadavg()[0]:.1f}", flush=True)
        results: dict[str, dict[str, object]] = {t.name: {} for t in tools}
        for step in ("index", "rerun"):  # the re-run is the index command again, nothing changed
            for tool in order:
                results[tool.name][step] = tool.index()
        for _ in range(QUERIES):
            for tool in order:
                results[tool.name].setdefault("queries", []).append(tool.query()["s"])
    r, c = results["rclip"], results["clipdex"]
    print(f"  {'':<28} {'rclip':>12} {'clipdex':>12} {'clipdex/rclip':>14}")
    row("index (empty index)", r["index"]["s"], c["index"]["s"], "s")
    row("  peak RSS, process tree", r["index"]["rss"], c["index"]["rss"], "B")
    row("  peak PSS, process tree", r["index"]["pss"], c["index"]["pss"], "B")
    row("re-run, nothing changed", r["rerun"]["s"], c["rerun"]["s"], "s")
    row("  peak RSS, process tree", r["rerun"]["rss"], c["rerun"]["rss"], "B")
    row(f"cold text query (median {QUERIES})", statistics.median(r["queries"]), statistics.median(c["queries"]), "s")
    print(f"  images/s indexing: rclip {count / r['index']['s']:.1f}, clipdex {count / c['index']['s']:.1f}")


def main() -> None:
    print(f"rclip vs clipdex: {cpu_info()}")
    ensure_setup()
    rclip_version = subprocess.run([str(RCLIP), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{rclip_version}: OpenCLIP ViT-B-32-256 (256x256, 65 tokens/image), random weights, {RCLIP_MODELS}")
    vision = json.loads((CLIPDEX_MODEL / "config.json").read_text())["vision_config"]
    size, patch = vision["image_size"], vision["patch_size"]
    tokens = (size // patch) ** 2 + 1
    print(f"clipdex: {CLIPDEX_MODEL} ({size}x{size}, {tokens} tokens/image); python {sys.version.split()[0]}")
    print("rclip's index figures include loading its text tower and one query: it always searches after indexing")
    dirs = folders()
    warm_up(min(dirs, key=lambda d: sum(1 for _ in d.rglob("*"))))
    for i, folder in enumerate(dirs):
        bench_folder(folder, rclip_first=i % 2 == 0)


if __name__ == "__main__":
    main()

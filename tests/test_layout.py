"""Guards against rot: the query path (and clusters) stays light, and the CLI reference page matches the commands'
help."""

import json
import subprocess
import sys

import pytest

from indexer.indexing import index_folder
from tests.support.photos import write_photos

# Seconds each at import; none of them is needed to answer a query (the ONNX export runs in its own process).
HEAVY = ("torch", "transformers", "scipy", "sklearn", "pandas", "sentence_transformers")
# Runs the query in a fresh interpreter, then prints which heavy packages it imported.
QUERY_PATH = """
import json, sys
{run}
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print("\\nIMPORTED " + json.dumps(heavy))
"""
CLI = "from search.cli import app\napp({args!r}, standalone_mode=False)"
SERVICE = """
from indexer.settings import Settings
from search.service import Service
service = Service(Settings(store={store!r}))
service.search("a dog on a beach", k=3, relevant=True)
service.similar(1, k=3)
"""


def imported(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", QUERY_PATH.format(run=code, heavy=HEAVY)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.rsplit("IMPORTED ", 1)[1])


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, clip_dir):
    from indexer.settings import Settings

    root = tmp_path_factory.mktemp("query-path")
    settings = Settings(store=root / "store", model=str(clip_dir), device="cpu", workers=1)
    write_photos(root / "photos", 4)
    index_folder(root / "photos", settings, show_progress=False)
    return str(settings.store)


@pytest.mark.parametrize(
    "command",
    [["search", "a dog on a beach", "--relevant"], ["similar", "1"], ["clusters", "--k", "2"]],
    ids=["search", "similar", "clusters"],
)
def test_cli_queries_import_nothing_heavy(indexed, command):
    assert imported(CLI.format(args=[*command, "--store", indexed])) == []


def test_the_services_request_path_imports_nothing_heavy(indexed):
    assert imported(SERVICE.format(store=indexed)) == []


def test_the_cli_reference_page_is_up_to_date():
    done = subprocess.run([sys.executable, "-m", "docs.gen_cli", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, "docs/cli.md is stale: run python -m docs.gen_cli\n" + done.stdout + done.stderr

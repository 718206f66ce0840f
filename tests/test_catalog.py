"""`clipdex models`: the catalogue's facts match the architectures it names, and every entry has its figures."""

import json

import pytest
from typer.testing import CliRunner

from indexer.models import catalog
from indexer.models.catalog import CATALOG, measured, model_config
from indexer.models.loading import embedding_dim
from search.cli import app

runner = CliRunner()


@pytest.mark.parametrize("entry", CATALOG, ids=lambda e: e.id)
def test_each_architecture_has_the_width_and_input_the_table_says(entry):
    config = model_config(entry)
    assert embedding_dim(config) == entry.dim
    vision = config.vision_config
    if entry.max_patches:
        assert config.model_type == "siglip2" and vision.num_patches == entry.max_patches
        assert f"{entry.max_patches} patches" in entry.image
    else:
        assert vision.image_size == entry.image_size and entry.image.startswith(f"{entry.image_size} px")
    assert entry.languages == "multilingual" or entry.vocab_size < 100_000  # the multilingual ones: big vocabularies


def test_every_entry_was_measured_here():
    """bench/models.py's figures cover the whole table: a new entry needs `make bench-models` (or --only ID)."""
    figures = measured()
    assert figures["cpu"] and figures["runtime"]
    assert set(figures["models"]) == {e.id for e in CATALOG}
    for entry in CATALOG:
        row = figures["models"][entry.id]
        assert row["memory_mb"] > 0 and row["images_per_s"] > 0 and row["params_m"] > 0


def test_models_command_prints_every_model_with_its_figures():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [row["id"] for row in data["models"]] == [e.id for e in CATALOG]
    b32 = data["models"][0]
    assert (b32["dim"], b32["imagenet"], b32["coco"]) == (512, 63.3, 30.4)
    assert b32["images_per_s"] == measured()["models"][b32["id"]]["images_per_s"]
    assert "vision" not in b32  # how the bench rebuilds it is not for the user
    text = runner.invoke(app, ["models"]).stdout
    assert all(e.id in text for e in CATALOG) and measured()["cpu"] in text


def test_models_command_without_measurements_says_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "MEASURED_FILE", tmp_path / "none.json")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "make bench-models" in result.stdout
    assert "google/siglip2-base-patch16-naflex" in result.stdout

"""End to end on the demo catalogue, cold start: content must place items no model trained on.

The demo data is generated so that an item's text, image and audio reveal its hidden genre and
mood, which users' tastes follow. Holding out 20 % of the items with all their interactions,
the multimodal model (the demo's own tower settings) must rank those unseen items well above
random, and above an ID-only model, whose embeddings of unseen items were never trained.
Runs in the default suite (CI): ~30 s of training on two cores.
"""

from __future__ import annotations

import pytest

from tfmmrec import pipeline
from tfmmrec.config import load_config

COLD_START = ("data.split=cold_start", "train.verbose=0", "eval.ks=[10,20]")
ID_ONLY = ("text.enabled=false", "image.enabled=false", "audio.enabled=false")


def train_and_evaluate(root, name: str, *overrides: str) -> dict[str, dict[str, float]]:
    config = load_config(None, [*COLD_START, f"train.output_dir={root / name}",
                                f"train.cache_dir={root / 'cache'}", *overrides])
    result = pipeline.train(config, progress=False)
    assert result.workspace.split.kind == "cold_start"
    return pipeline.evaluate(config, model=result.model, workspace=result.workspace)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-e2e")
    return {"multimodal": train_and_evaluate(root, "multimodal"),
            "id_only": train_and_evaluate(root, "id-only", *ID_ONLY)}


def recall_at_20(results, model: str, row: str = "tfmmrec") -> float:
    return results[model][row]["recall@20"]


def test_id_only_model_really_has_no_content_towers(tmp_path):
    config = load_config(None, [*ID_ONLY, f"train.output_dir={tmp_path / 'run'}",
                                "data.demo.num_items=20", "data.demo.num_users=4"])
    workspace = pipeline.prepare(config, progress=False)
    model = pipeline.build_model(workspace)
    assert workspace.modalities == ()
    assert model.item_tower.id_embedding is not None and not model.item_tower.projections


def test_multimodal_beats_random_on_unseen_items_by_a_clear_margin(results):
    multimodal = recall_at_20(results, "multimodal")
    random = recall_at_20(results, "multimodal", "random")
    assert multimodal > random + 0.1
    assert multimodal > 1.4 * random


def test_multimodal_beats_id_only_on_unseen_items(results):
    assert recall_at_20(results, "multimodal") > recall_at_20(results, "id_only") + 0.1


def test_id_only_model_is_no_better_than_chance_on_unseen_items(results):
    """The control: without content, items never seen in training cannot be placed."""
    assert recall_at_20(results, "id_only") < recall_at_20(results, "id_only", "random") + 0.05

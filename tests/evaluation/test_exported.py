"""``tfmmrec evaluate --export``: the error when the export does not serve dataset items says
why (removed by ``catalog remove``, added to the dataset since the export, or an export of
another dataset), with plain ids."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tfmmrec import pipeline
from tfmmrec.config import load_config
from tfmmrec.errors import ExportError
from tfmmrec.evaluation.exported import exported_embeddings, unserved_items_message
from tfmmrec.export import catalog


@pytest.fixture(scope="module")
def removed(tiny_config, tiny_trained, tmp_path_factory) -> Path:
    """Version 2 of the tiny model: version 1 less three items (``catalog remove``)."""
    config = load_config(tiny_config, [
        f"export.base_dir={tmp_path_factory.mktemp('eval-export')}"])
    first = pipeline.export(config, model=tiny_trained.model,
                            workspace=tiny_trained.workspace, index="brute_force")
    return catalog.remove(first.parent, item_ids=["i0001", "i0002", "i0003"]).version_dir


def test_items_removed_by_catalog_remove_are_named_as_removed(removed, tiny_trained):
    version = removed
    ws = tiny_trained.workspace
    with pytest.raises(ExportError) as info:
        exported_embeddings(version, ws.user_ids[:3], ws.dataset.catalog.item_ids)
    message = str(info.value)
    assert (f"{version} has no embedding for 3 item(s) of the dataset's catalogue: 3 "
            "(i0001, i0002, i0003) were removed from it by `tfmmrec catalog remove`") in message
    assert f"--export {version.parent / '1'}" in message
    assert "np.str_" not in message and "added" not in message


def test_items_new_to_the_dataset_are_named_as_added(removed, tiny_trained):
    version = removed
    ws = tiny_trained.workspace
    wanted = np.array([*ws.dataset.catalog.item_ids[:2].astype(str), "new-1", "new-2"])
    with pytest.raises(ExportError, match=r"has no embedding for 3 item\(s\) .*: 1 \(i0001\) "
                                          r"were removed .*; 2 \(new-1, new-2\) were added to "
                                          r"the dataset after it was exported: export the "
                                          r"model again, or `tfmmrec catalog add` them"):
        exported_embeddings(version, ws.user_ids[:3], wanted)


def test_an_export_that_knows_few_of_the_datasets_items_belongs_to_another_dataset(
        removed, tiny_trained):
    """An export of another model (ML-100K's, evaluated on the demo) knows none of the
    dataset's items: "add them to the catalogue" would be the wrong advice."""
    version = removed.parent / "1"
    ws = tiny_trained.workspace
    wanted = np.array(["i0000", *(f"m{n}" for n in range(9))])
    with pytest.raises(ExportError) as info:
        exported_embeddings(version, ws.user_ids[:3], wanted)
    message = str(info.value)
    assert message.startswith(f"{version} does not belong to this dataset: it knows 1 of the "
                              "dataset's 10 items (i0000, m0, m1, …); it serves "
                              f"{len(ws.dataset.catalog.item_ids)} items (")
    assert ("its metadata: modalities text (title, description), image (image), audio (audio), "
            "embedding_dim 16") in message
    assert "--config the one it was exported with" in message
    assert "added to the dataset" not in message and "\n" not in message


def test_an_export_that_knows_few_of_the_datasets_users_belongs_to_another_dataset(
        removed, tiny_trained):
    """Unknown users would be scored as cold-start queries: most of them unknown is another
    dataset's export, not a few new users (who are evaluated as the export serves them)."""
    version = removed.parent / "1"
    items = tiny_trained.workspace.dataset.catalog.item_ids
    known = [str(u) for u in tiny_trained.workspace.user_ids[:3]]
    expected = (rf"^{re.escape(str(version))} does not belong to this dataset: it knows 1 of "
                rf"the dataset's 4 users \(x1, x2, {known[0]}, …\); its metadata: modalities text")
    with pytest.raises(ExportError, match=expected):
        exported_embeddings(version, np.array(["x1", "x2", known[0], "x3"]), items,
                            trained_users=["x1", "x2", known[0], "x3"])
    users, _ = exported_embeddings(version, np.array([*known, "someone-new"]), items,
                                   trained_users=[*known, "someone-new"])
    assert users.shape[0] == 4
    # users without training interactions get the cold-start query legitimately: not counted
    users, _ = exported_embeddings(version, np.array(["x1", "x2", known[0], "x3"]), items,
                                   trained_users=[known[0]])
    assert users.shape[0] == 4


def test_without_a_record_both_causes_are_named(tmp_path):
    message = unserved_items_message(tmp_path / "3", [f"x{i}" for i in range(7)], None)
    assert "(x0, x1, x2, x3, x4 and 2 more)" in message
    assert "added to the dataset after this export" in message
    assert "removed from it by `tfmmrec catalog remove`" in message


def test_users_are_sent_in_batches_the_export_accepts(tiny_config, tiny_trained, tmp_path):
    # an export accepting 4 users per call, asked for 20 users with eval batches of 1024
    config = load_config(tiny_config, [f"export.base_dir={tmp_path}",
                                       "export.limits.max_batch_size=4"])
    version = pipeline.export(config, model=tiny_trained.model,
                              workspace=tiny_trained.workspace, index="brute_force")
    ws = tiny_trained.workspace
    users, items = exported_embeddings(version, ws.user_ids[:20], ws.dataset.catalog.item_ids)
    np.testing.assert_allclose(users, pipeline.embed_users(tiny_trained.model, ws.user_ids[:20]),
                               atol=1e-5)
    assert items.shape[0] == len(ws.dataset.catalog.item_ids)

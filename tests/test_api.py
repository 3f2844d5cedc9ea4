"""The public API: every name in ``tfmmrec.__all__`` resolves, and stays callable after the
subpackages behind it have been imported (a function must not be shadowed by a submodule)."""

from __future__ import annotations

import importlib

import pytest

import tfmmrec

EXPECTED = {
    "Config": "tfmmrec.config", "load_config": "tfmmrec.config",
    "train": "tfmmrec.pipeline", "evaluate": "tfmmrec.pipeline", "restore": "tfmmrec.pipeline",
    "export_model": "tfmmrec.pipeline", "load_dataset": "tfmmrec.data.dataset",
    "build_demo_dataset": "tfmmrec.data.demo", "RetrievalModel": "tfmmrec.models.retrieval",
    "quiet_output": "tfmmrec._env", "show_progress": "tfmmrec._env",
    "class_reference": "tfmmrec.references",
}


def test_every_public_name_is_the_object_its_module_defines():
    from tfmmrec import errors, pipeline

    assert set(tfmmrec.__all__) == {*EXPECTED, "ConfigError", "DataError", "ExportError",
                                    "ServingError", "TfmmrecError", "TrainingError"}
    for name, module in EXPECTED.items():
        target = "export" if name == "export_model" else name
        assert getattr(tfmmrec, name) is getattr(importlib.import_module(module), target), name
    assert tfmmrec.restore is pipeline.restore
    for name in ("ConfigError", "DataError", "ExportError", "ServingError", "TrainingError"):
        assert issubclass(getattr(tfmmrec, name), errors.TfmmrecError), name
    assert tfmmrec.TfmmrecError is errors.TfmmrecError


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'restore_model'"):
        tfmmrec.restore_model  # noqa: B018  (removed: tfmmrec.restore replaces it)


def test_export_model_is_not_shadowed_by_the_export_subpackage():
    importlib.import_module("tfmmrec.export.index")  # sets tfmmrec.export to the subpackage
    assert callable(tfmmrec.export_model)
    assert callable(tfmmrec.train) and callable(tfmmrec.evaluate)


def test_dir_lists_every_public_name_lazy_ones_included():
    assert set(tfmmrec.__all__) <= set(dir(tfmmrec))


def test_load_dataset_takes_a_whole_config_as_every_entry_point_does(tiny_config):
    config = tiny_config
    by_config = tfmmrec.load_dataset(config)
    by_folder = tfmmrec.load_dataset(config.data.path)
    assert by_config.root == by_folder.root
    assert list(by_config.catalog.item_ids) == list(by_folder.catalog.item_ids)
    with pytest.raises(TypeError, match="takes a Config, a DataConfig or a folder path, got int"):
        tfmmrec.load_dataset(3)


def test_train_result_and_workspace_print_in_a_few_lines(tiny_trained):
    """The dataclass default printed the whole dataset and feature tables (114 KB on the demo);
    a result shown in a notebook or a log must say where the run is and what it did."""
    text = repr(tiny_trained)
    assert len(text) < 1000 and len(text.splitlines()) <= 6
    assert str(tiny_trained.output_dir) in text
    assert f"epochs_run={tiny_trained.epochs_run}" in text and "last loss" in text
    workspace = repr(tiny_trained.workspace)
    assert len(workspace) < 400 and "\n" not in workspace
    assert f"{tiny_trained.workspace.dataset.num_items} items" in workspace
    assert tiny_trained.workspace.split.sizes() in workspace and workspace in text
    dataset = tiny_trained.workspace.dataset  # a review: 105 KB for ML-100K's
    for shown in (repr(dataset), repr(dataset.catalog)):
        assert len(shown) < 300 and "\n" not in shown and f"{dataset.num_items} items" in shown


def test_train_reports_epochs_to_the_tfmmrec_logger_as_its_docstring_says(
        tiny_config, tiny_workspace, tmp_path, caplog):
    """Python callers see progress by showing the ``tfmmrec`` logger at INFO (what
    ``tfmmrec.train``'s docstring tells them); the library itself prints nothing."""
    import inspect
    import logging

    from tests.conftest import derive_config

    assert inspect.signature(tfmmrec.train).parameters["progress"].default is True
    config = derive_config(tiny_config, tmp_path, "train.epochs=1", "train.verbose=1")
    with caplog.at_level(logging.INFO, logger="tfmmrec"):
        tfmmrec.train(config, workspace=tiny_workspace)
    lines = [r.getMessage() for r in caplog.records if r.name == "tfmmrec.training.trainer"]
    assert any(line.startswith("epoch 1/1: ") and " loss " in line for line in lines), lines
    assert "logging.getLogger(\"tfmmrec\").setLevel(logging.INFO)" in tfmmrec.train.__doc__

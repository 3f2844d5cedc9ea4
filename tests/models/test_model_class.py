"""``model.model_class``: a RetrievalModel subclass named by the config trains through the
pipeline (its ``compute_loss``), and a restore rebuilds that class; bad names are one-line
``ConfigError``s before any data is read."""

from __future__ import annotations

import pytest
import yaml

import tfmmrec
from tests.conftest import derive_config
from tfmmrec import pipeline
from tfmmrec.config import load_config
from tfmmrec.errors import ConfigError
from tfmmrec.models.classes import model_class
from tfmmrec.models.ranking import MultitaskModel
from tfmmrec.models.retrieval import RetrievalModel

CONSTANT_LOSS = 7.0


class ConstantLossModel(RetrievalModel):
    """A loss the library's never is: the base loss times 0, plus a constant (zero gradients,
    so the epoch's mean loss is exactly the constant)."""

    def compute_loss(self, features, training=False):
        return super().compute_loss(features, training=training) * 0.0 + CONSTANT_LOSS


def test_the_named_subclass_trains_and_restores(tiny_config, tiny_workspace, tmp_path):
    reference = tfmmrec.class_reference(ConstantLossModel)
    assert reference == "tests.models.test_model_class:ConstantLossModel"
    config = derive_config(tiny_config, tmp_path, f"model.model_class={reference}",
                           "train.epochs=1")
    result = pipeline.train(config, workspace=tiny_workspace, progress=False)
    assert type(result.model) is ConstantLossModel
    assert result.history["loss"] == [pytest.approx(CONSTANT_LOSS, abs=1e-6)]
    restored, _ = pipeline.restore(config.train.output_dir, workspace=tiny_workspace)
    assert type(restored) is ConstantLossModel


def test_the_default_is_the_library_model():
    assert model_class("", ranking=False) is RetrievalModel
    assert model_class("", ranking=True) is MultitaskModel


@pytest.mark.parametrize(("reference", "ranking", "says"), [
    ("no_such_module_here:Model", False, "cannot be imported in this process (ModuleNotFound"),
    ("tfmmrec.models.retrieval:NoSuchModel", False, "cannot be imported"),
    ("collections:OrderedDict", False, "is a class OrderedDict, not a subclass of "
                                       "tfmmrec.models.retrieval.RetrievalModel"),
    ("tfmmrec.references:REFERENCE", False, "is a Pattern, not a subclass"),
    ("tfmmrec.models.ranking:MultitaskModel", False, "set ranking.enabled: true"),
    ("tests.models.test_model_class:ConstantLossModel", True,
     "not a subclass of tfmmrec.models.ranking.MultitaskModel (ranking.enabled: true"),
])
def test_a_bad_class_is_named_in_one_line(reference, ranking, says):
    with pytest.raises(ConfigError, match=r"model\.model_class=") as error:
        model_class(reference, ranking)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_train_refuses_before_reading_any_data(tmp_path):
    config = load_config(None, [f"data.path={tmp_path / 'absent'}",
                                "model.model_class=no_such_module_here:Model",
                                f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"model\.model_class='no_such_module_here:Model'"):
        pipeline.train(config, progress=False)


@pytest.mark.parametrize("value", ["Model", "a.b", "a:b c", ":Model", "1pkg:Model"])
def test_the_config_takes_only_module_colon_name(value):
    with pytest.raises(ConfigError, match=r"model\.model_class"):
        load_config(None, [f"model.model_class={value}"])


def test_a_class_defined_in_a_function_is_refused_saying_why():
    class Local(ConstantLossModel):
        pass

    with pytest.raises(ConfigError, match=r"defined inside a function cannot be imported"):
        load_config(None, [f"model.model_class={tfmmrec.class_reference(Local)}"])


def test_a_class_of_a_module_run_with_dash_m_is_named_by_that_module(monkeypatch):
    import sys
    import types

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="my_package.train")
    monkeypatch.setitem(sys.modules, "__main__", main)
    cls = type("Model", (), {"__module__": "__main__"})
    assert tfmmrec.class_reference(cls) == "my_package.train:Model"


def test_a_class_in_main_trains_with_a_warning_that_only_this_process_restores(monkeypatch,
                                                                              caplog):
    import sys

    monkeypatch.setattr(sys.modules["__main__"], "ConstantLossModel", ConstantLossModel,
                        raising=False)
    config = load_config(None, ["model.model_class=__main__:ConstantLossModel"])
    with caplog.at_level("WARNING", logger="tfmmrec"):
        pipeline._check_model_class(config)
    assert "only this process can rebuild the run's model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tfmmrec"):
        pipeline._check_model_class(load_config(None, [
            f"model.model_class={tfmmrec.class_reference(ConstantLossModel)}"]))
    assert not caplog.text


def test_a_run_whose_class_cannot_be_imported_is_refused_before_its_data_is_read(
        tiny_config, tiny_trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_trained.output_dir, run)
    for path in (run / "checkpoints" / "model.yaml", run / "config.yaml"):  # as trained
        saved = yaml.safe_load(path.read_text())
        saved["model"]["model_class"] = "gone_pkg:Model"
        path.write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"model\.model_class='gone_pkg:Model' cannot be "):
        pipeline.check_restorable(run)

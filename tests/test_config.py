"""Tests for tfmmrec.config: every bad value fails at load time naming its dotted field."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tfmmrec.config import (
    Config,
    ImageTowerConfig,
    TextTowerConfig,
    apply_overrides,
    check_same_model,
    content_sections,
    load_config,
    model_sections,
    register_tower_section,
    section_names,
    tower_sections,
    unregister_tower_section,
)
from tfmmrec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# (override, text the error must contain)
INVALID = [
    ("data.split=shuffled", "data.split='shuffled'"),
    ("data.test_fraction=1.0", "data.test_fraction=1.0"),
    ("data.test_fraction=0", "data.test_fraction=0"),
    ("data.demo.num_items=5", "data.demo.num_items=5"),
    ("model.linear_cf_content=knn", "model.linear_cf_content='knn'"),
    ("model.linear_cf_foldin=cg", "model.linear_cf_foldin='cg'"),
    ("model.linear_cf=best", "one of none, ease, ials, ease+ials, auto"),
    ("data.demo.num_users=1", "data.demo.num_users=1"),
    ("data.demo.interactions_per_user=1", "data.demo.interactions_per_user=1"),
    ("text.pooling=max", "text.pooling='max'"),
    ("text.sequence_length=4", "text.sequence_length=4"),
    ("text.hidden_dim=63", "text.hidden_dim=63"),
    ("image.backbone=vit", "image.backbone='vit'"),
    ("image.backbone=hub", "image.handle=None"),
    ("image.backbone=keras_app", "image.application=None"),
    ("image.image_size=8", "image.image_size=8"),
    ("audio.backbone=vggish", "audio.backbone='vggish'"),
    ("audio.pooling=median", "audio.pooling='median'"),
    ("audio.sample_rate=44100", "audio.sample_rate=44100"),
    ("audio.max_seconds=0", "audio.max_seconds=0"),
    ("model.fusion=sum", "model.fusion='sum'"),
    ("model.embedding_dim=1", "model.embedding_dim=1"),
    # a width no model needs: its weights would exhaust memory before any message
    ("model.embedding_dim=100000000", "model.embedding_dim=100000000: expected in [2, 8192]"),
    ("model.projection_hidden=[1000000]", "model.projection_hidden=[1000000]: expected a list "
     "of integers from 1 to 8192"),
    ("model.temperature=0", "model.temperature=0"),
    ("model.modality_dropout=1.0", "model.modality_dropout=1.0"),
    ("model.user_id_dropout=-0.1", "model.user_id_dropout=-0.1"),
    ("model.history_length=-1", "model.history_length=-1"),
    ("model.linear_cf_half_life=-5", "model.linear_cf_half_life=-5"),
    ("model.linear_cf_half_life=nan", "model.linear_cf_half_life=nan"),
    ("train.epochs=0", "train.epochs=0"),
    ("train.batch_size=1", "train.batch_size=1"),
    ("train.learning_rate=0", "train.learning_rate=0"),
    ("train.optimizer=rmsprop", "train.optimizer='rmsprop'"),
    ("train.strategy=gpu", "train.strategy='gpu'"),
    ("eval.ks=[]", "eval.ks=[]"),
    ("eval.ks=[10,0]", "eval.ks=[10, 0]"),
    ("export.index=faiss", "export.index='faiss'"),
    ("export.k=500", "export.k=500"),
    ("export.version=0", "export.version=0"),
    ("data.seed=-1", "data.seed=-1"),
    ("data.demo.seed=-1", "data.demo.seed=-1"),
    ("train.seed=-1", "train.seed=-1"),
    ("train.encode_batch_size=0", "train.encode_batch_size=0"),
    ("train.backup_seconds=-1", "train.backup_seconds=-1"),
    ("train.backup_seconds=nan", "train.backup_seconds=nan"),
    ("eval.batch_size=0", "eval.batch_size=0"),
    # YAML's true is an int to isinstance, and .inf / nan pass a "> 0" check
    ("train.epochs=true", "train.epochs=True"),
    ("eval.ks=[10, true]", "eval.ks=[10, True]"),
    ("model.temperature=.inf", "model.temperature=inf"),
    ("model.temperature=inf", "model.temperature=inf"),
    ("train.learning_rate=nan", "train.learning_rate=nan"),
    # each would otherwise fail later, in training or export, with a library traceback
    ("text.num_heads=0", "text.num_heads=0"),
    ("facets.num_heads=0", "facets.num_heads=0"),
    ("text.hidden_dim=-2", "text.hidden_dim=-2"),
    ("train.seed=99999999999", "train.seed=99999999999: expected a seed in [0, 4294967295]"),
    ("text.seed=-1", "text.seed=-1"),
    ("export.partitioned.seed=-1", "export.partitioned.seed=-1"),
    ("model.dropout=1.5", "model.dropout=1.5"),
    ("model.projection_hidden=[-4]", "model.projection_hidden=[-4]"),
    ("image.cnn_filters=[]", "image.cnn_filters=[]"),
    ("audio.cnn_filters=[16, 0]", "audio.cnn_filters=[16, 0]"),
    ("ranking.negatives_per_positive=0", "ranking.negatives_per_positive=0"),
    ("ranking.deep_layers=[0]", "ranking.deep_layers=[0]"),
    ("export.scann.dimensions_per_block=0", "export.scann.dimensions_per_block=0"),
    ("export.scann.num_leaves=-3", "export.scann.num_leaves=-3"),
    ("export.model_name=''", "export.model_name=''"),
    ("export.model_name=a/b", "export.model_name='a/b'"),
    # a scalar where a list is expected: the value as written, not dacite's generator
    ("data.text_columns=title", "data.text_columns='title': expected list[str] | None"),
]


def test_defaults_are_the_embedded_demo_and_valid():
    config = Config()
    assert config.data.path is None
    assert config.data.split == "random"
    assert config.text.preset is None and config.image.backbone == "small_cnn"
    assert config.audio.backbone == "small_cnn"
    assert load_config() == config


@pytest.mark.parametrize(("override", "expected"), INVALID, ids=[o for o, _ in INVALID])
def test_invalid_value_raises_config_error_naming_field_and_value(override, expected):
    with pytest.raises(ConfigError, match="invalid config value") as info:
        load_config(None, [override])
    assert expected in str(info.value)
    assert "expected" in str(info.value)  # says what would be valid


def test_disabled_hub_image_tower_needs_no_handle():
    assert load_config(None, ["image.backbone=hub", "image.enabled=false"]).image.handle is None


def test_unknown_key_names_dotted_key_and_source_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 2, "epoch": 3}, "modle": {}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "modle" in message and "train.epoch" in message
    assert "\n" not in message


def test_unknown_nested_override_key_is_named_with_its_section():
    with pytest.raises(ConfigError, match=r"data\.demo\.items"):
        load_config(None, ["data.demo.items=3"])


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(None, ["train.epochs=many"])


def test_yaml_round_trip_keeps_every_field(tmp_path):
    config = load_config(None, ["model.fusion=gated", "text.pooling=cls", "eval.ks=[5,7]",
                                "image.cnn_filters=[4,8]", "export.scann.num_leaves=7"])
    config.to_yaml(tmp_path / "c.yaml")
    assert Config.from_yaml(tmp_path / "c.yaml") == config


def test_overrides_parse_values_as_yaml():
    config = load_config(None, ["text.enabled=false", "data.path=null", "eval.ks=[1, 2]",
                                "train.learning_rate=1e-3", "data.text_columns=[title]"])
    assert config.text.enabled is False
    assert config.data.path is None
    assert config.eval.ks == [1, 2]
    assert config.train.learning_rate == pytest.approx(0.001)
    assert config.data.text_columns == ["title"]


def test_yaml_file_plus_overrides_override_file_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 16\n")
    config = load_config(path, ["train.epochs=5"])
    assert (config.train.epochs, config.train.batch_size) == (5, 16)


def test_load_config_with_overrides_leaves_original_unchanged():
    original = Config()
    changed = load_config(original, ["train.epochs=3"])
    assert changed.train.epochs == 3
    assert original.train.epochs == Config().train.epochs


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train.epochs:3"])
def test_malformed_override_raises_config_error(override):
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        apply_overrides({}, [override])


def test_an_override_whose_value_is_not_yaml_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'train\.epochs=\[1': its value is not "
                                          r"valid YAML at line 1, column 3"):
        load_config(None, ["train.epochs=[1"])


def test_a_seed_at_the_top_of_its_range_is_accepted():
    assert load_config(None, ["data.seed=4294967295"]).data.seed == 2**32 - 1


def test_override_without_a_value_is_refused_rather_than_reset_to_the_default():
    with pytest.raises(ConfigError, match=r"'data\.path=' has no value.*data\.path=null"):
        load_config(None, ["data.path="])


def test_null_is_the_default_of_a_field_that_cannot_be_none(tmp_path):
    """The error for ``--set train.epochs=`` says to write ``null`` for the default, which
    then failed: ``expected int``. A field that may be None keeps null as its value."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: null\nmodel:\n  linear_cf_half_life: null\n")
    for config in (load_config(None, ["train.epochs=null", "model.fusion=null"]),
                   load_config(path)):
        assert config.train.epochs == Config().train.epochs
        assert config.model.fusion == Config().model.fusion
        assert config.model.linear_cf_half_life is None
    assert load_config(None, ["data.path=null"]).data.path is None


def test_overrides_given_as_one_string_are_refused_with_the_expected_form():
    with pytest.raises(ConfigError, match=r"must be a list of 'section\.field=value' strings"):
        load_config(None, "train.epochs=3")


def test_a_repeated_section_in_a_yaml_file_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  output_dir: runs/mine\n  epochs: 3\nmodel:\n  "
                    "embedding_dim: 32\ntrain:\n  batch_size: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "duplicate key 'train'" in message
    assert "line 6" in message and "line 1" in message and "\n" not in message


def test_a_repeated_field_inside_a_section_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match="line 3: duplicate key 'epochs'"):
        load_config(path)


def test_override_through_a_scalar_raises_config_error():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": 3}, ["train.epochs=2"])


def test_missing_config_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_raises_config_error_naming_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(path)


def test_non_mapping_yaml_raises_config_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- train\n- eval\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_empty_yaml_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_cache_dir_defaults_beside_the_run_directory():
    config = load_config(None, ["train.output_dir=/runs/a"])
    assert config.train.resolved_cache_dir == Path("/runs/encoder-cache")
    config = load_config(None, ["train.cache_dir=/elsewhere"])
    assert config.train.resolved_cache_dir == Path("/elsewhere")


def test_tower_returns_each_modality_config():
    config = Config()
    assert config.tower("text") is config.text
    assert config.tower("image") is config.image
    assert config.tower("audio") is config.audio
    with pytest.raises(ConfigError, match=r"no tower section 'smell'.*text, image, audio"):
        config.tower("smell")


# --- tower sections come from the registered modalities ----------------------------------------


def test_sections_are_data_the_registered_towers_then_the_rest_in_yaml_order():
    assert tower_sections() == ("text", "image", "audio", "facets")
    assert list(Config().to_dict()) == ["data", "text", "image", "audio", "facets", "model",
                                        "ranking", "train", "eval", "export"]
    assert model_sections() == ("data", "text", "image", "audio", "facets", "model", "ranking")
    assert content_sections() == ("data", "text", "image", "audio", "facets")


def test_a_tower_section_is_set_by_keyword_and_checked():
    config = Config(image=ImageTowerConfig(image_size=32))
    assert config.image.image_size == 32 and config.text == TextTowerConfig()
    assert config == load_config(None, ["image.image_size=32"])
    with pytest.raises(ConfigError, match=r"unknown config section\(s\) smell"):
        Config(smell=TextTowerConfig())
    with pytest.raises(ConfigError, match="section image must be a ImageTowerConfig"):
        Config(image=TextTowerConfig())
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) towers"):
        Config.from_dict({"towers": {}})


def test_a_registered_tower_section_is_parsed_validated_and_dropped_again():
    """What ``modalities.register`` does for a new modality's tower config (config side only;
    tests/modalities/test_registry.py registers a whole modality)."""

    @dataclasses.dataclass
    class SmellTowerConfig:
        enabled: bool = True
        channels: int = 4

        def __post_init__(self):
            if self.channels < 1:
                raise ConfigError(f"invalid config value smell.channels={self.channels!r}: "
                                  "expected >= 1")

    register_tower_section("smell", SmellTowerConfig)
    try:
        config = load_config(None, ["smell.channels=8", "model.feature_dropout={smell: 0.5}"])
        assert config.tower("smell") == SmellTowerConfig(channels=8)
        assert model_sections()[-3:] == ("smell", "model", "ranking")
        with pytest.raises(ConfigError, match=r"smell\.channels=0"):
            load_config(None, ["smell.channels=0"])
        with pytest.raises(ConfigError, match=r"smell\.channels: 8 in the run, 2 requested"):
            check_same_model(config, load_config(config, ["smell.channels=2"]), "the run")
        with pytest.raises(ValueError, match="already SmellTowerConfig"):
            register_tower_section("smell", TextTowerConfig)
        for taken in ("model", "tower", "to_yaml", "not-a-name"):
            with pytest.raises(ValueError, match="fixed Config section or attribute"):
                register_tower_section(taken, SmellTowerConfig)
    finally:
        unregister_tower_section("smell")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) smell"):
        load_config(None, ["smell.channels=8"])
    with pytest.raises(ConfigError, match=r"model\.feature_dropout='smell'"):
        load_config(None, ["model.feature_dropout={smell: 0.5}"])


def test_reading_a_config_imports_no_tensorflow():
    """The registry's built-in sections register with their dataclasses, so parsing a config
    (the CLI's --help, a config check) never loads TensorFlow or the modality specs."""
    code = ("import sys, tfmmrec.config as c; c.load_config(None, ['image.image_size=32']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'numpy', 'pandas') or m.startswith('tfmmrec.modalities')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_files_load(path):
    assert isinstance(load_config(path), Config)


def test_fine_tuned_text_on_a_tpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"text\.trainable=true cannot train on a TPU"):
        load_config(None, ["train.strategy=tpu", "text.trainable=true"])
    assert load_config(None, ["train.strategy=tpu"]).train.strategy == "tpu"


def test_feature_dropout_is_keyed_by_modality_with_rates_below_one():
    assert load_config(None, ["model.feature_dropout={image: 0.8}"]).model.feature_dropout == {
        "image": 0.8}
    with pytest.raises(ConfigError, match=r"model\.feature_dropout"):
        load_config(None, ["model.feature_dropout={poster: 0.5}"])
    with pytest.raises(ConfigError, match=r"model\.feature_dropout\.image"):
        load_config(None, ["model.feature_dropout={image: 1.0}"])


# --- fields assigned in Python ---------------------------------------------------------------

# (assignment on a default Config ``c``, text the error must contain)
BAD_ASSIGNMENTS = [
    ("c.train.epoch = 3", "train has no field 'epoch' (did you mean 'epochs'?)"),
    ("c.train.epochs = '3'", "train.epochs='3': expected int"),
    ("c.train.epochs = True", "train.epochs=True: expected int, not true/false"),
    ("c.model.temperature = float('inf')", "model.temperature=inf: expected a finite number"),
    ("c.model.fusion = 'sum'", "model.fusion='sum': expected one of concat_mlp, mean"),
    ("c.data.text_columns = 'title'", "data.text_columns='title': expected list[str] | None"),
    ("c.data.demo.num_item = 30", "data.demo has no field 'num_item' (did you mean"),
    ("c.export.limits.max_image_pixels = 1.5", "export.limits.max_image_pixels=1.5"),
    ("c.image.image_sise = 32", "image has no field 'image_sise' (did you mean 'image_size'"),
    ("c.facets.sequence_length = None", "facets.sequence_length=None: expected int"),
    ("c.trian = c.train", "no section 'trian' (did you mean 'train'?)"),
    ("c.image = c.train", "config section image must be a ImageTowerConfig, got TrainConfig"),
]


@pytest.mark.parametrize(("assignment", "expected"), BAD_ASSIGNMENTS,
                         ids=[a for a, _ in BAD_ASSIGNMENTS])
def test_a_bad_assignment_in_python_fails_on_its_line_naming_the_field(assignment, expected):
    c = Config()
    before = c.to_dict()
    with pytest.raises(ConfigError) as raised:
        exec(assignment, {"c": c})
    assert expected in str(raised.value)
    assert c.to_dict() == before  # nothing half-set


def test_assignments_in_python_take_what_yaml_would(tmp_path):
    import numpy as np

    c = Config()
    c.train.epochs = np.int64(4)  # an array's element is stored as the Python number
    c.model.temperature = 1  # an int where a float is expected, as YAML's `temperature: 1`
    c.eval.ks = (10, 20)
    c.image = ImageTowerConfig(image_size=32)
    assert type(c.train.epochs) is int and c.train.epochs == 4
    assert c.towers["image"].image_size == 32 and c.image.image_size == 32
    assert load_config(c) is c
    c.to_yaml(tmp_path / "config.yaml")
    assert Config.from_yaml(tmp_path / "config.yaml").train.epochs == 4


def test_checks_relating_fields_run_when_the_config_is_used_so_any_order_works():
    c = Config()
    c.export.k = 500  # above export.max_k=100 until the next line
    with pytest.raises(ConfigError, match=r"export\.k=500: expected in \[1, export\.max_k=100\]"):
        load_config(c)
    c.export.max_k = 1000
    assert load_config(c).export.k == 500


def test_a_mapping_of_sections_is_a_config_as_a_yaml_file_would_be():
    config = load_config({"train": {"epochs": 3}}, ["model.fusion=mean"])
    assert (config.train.epochs, config.model.fusion) == (3, "mean")
    with pytest.raises(ConfigError,
                       match=r"the config mapping: unknown config key\(s\) train\.epoch"):
        load_config({"train": {"epoch": 3}})
    with pytest.raises(ConfigError,
                       match=r"a config is a Config, a YAML path, a mapping .*got int 5"):
        load_config(5)


def test_export_version_is_at_most_the_18_digits_a_version_directory_is_listed_with():
    import re

    from tfmmrec.config import MAX_EXPORT_VERSION
    from tfmmrec.export.writer import _VERSION_DIR

    assert load_config(None, [f"export.version={MAX_EXPORT_VERSION}"]).export.version == \
        MAX_EXPORT_VERSION
    assert re.match(_VERSION_DIR, str(MAX_EXPORT_VERSION))
    assert not re.match(_VERSION_DIR, str(MAX_EXPORT_VERSION + 1))
    with pytest.raises(ConfigError, match=r"export\.version=1000000000000000000: expected in "
                                          r"\[1, 999999999999999999\] \(at most 18 digits\)"):
        load_config(None, [f"export.version={MAX_EXPORT_VERSION + 1}"])


def test_paths_tuples_and_numpy_numbers_are_stored_as_the_plain_data_yaml_gives(tmp_path):
    """So `to_yaml` writes them and a restored run's config compares equal (check_same_model)."""
    from tfmmrec.config import config_differences

    c = Config()
    c.train.output_dir = tmp_path / "run"
    c.model.projection_hidden = (32, 16)
    assert c.train.output_dir == str(tmp_path / "run")
    assert c.model.projection_hidden == [32, 16]
    assert config_differences(c, Config.from_dict(c.to_dict())) == []
    assert load_config(None, [f"train.output_dir={tmp_path}"]).train.output_dir == str(tmp_path)


def test_validate_checks_what_was_edited_in_place_and_the_towers_mapping_is_not_replaced():
    c = Config()
    c.eval.ks.append("20")  # no assignment: found when the config is used
    with pytest.raises(ConfigError, match=r"eval\.ks=\[10, 20, 50, 100, '20'\]: expected "
                                          r"list\[int\]"):
        load_config(c)
    with pytest.raises(ConfigError, match=r"set a tower section by its name"):
        Config().towers = {"image": "x"}


@pytest.mark.parametrize(("rate", "expected"), [("false", "not true/false"),
                                                (".nan", "a finite number")])
def test_a_dict_fields_values_are_real_numbers(rate, expected):
    with pytest.raises(ConfigError, match=rf"model\.feature_dropout=.*{expected}"):
        load_config(None, [f"model.feature_dropout={{image: {rate}}}"])


def test_a_config_file_that_is_not_utf8_is_one_line_naming_the_byte_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x00data: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: not UTF-8 text (byte 0xff at line 1, column 1): "
                               "save the file as UTF-8")
    path.write_bytes("train:\n  output_dir: runs/café\n".encode("cp1252"))  # é: byte 0xe9
    with pytest.raises(ConfigError, match=r"bad\.yaml: not UTF-8 text \(byte 0xe9 at line 2, "
                                          r"column 23\)"):
        load_config(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("train:\n  ks: [1, 2\n",
     "at line 3, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow "
     "sequence at line 2, column 7)"),
    ("train:\n\tepochs: 3\n",
     r"at line 2, column 1: found character '\t' that cannot start any token (while scanning "
     "for the next token); indent with spaces, not tabs"),
    ("train:\n  epochs: 3\n batch_size: 4\n",
     "at line 3, column 2: expected <block end>, but found '<block mapping start>' (while "
     "parsing a block mapping at line 1, column 1)"),
    ("train: {epochs: 3}\x00\n",
     "at line 1, column 19: unacceptable character #x0000: special characters are not "
     "allowed"),
], ids=["unclosed", "tab", "indent", "control-character"])
def test_a_yaml_syntax_error_is_one_line_naming_the_file_line_column_and_problem(
        tmp_path, text, expected):
    path = tmp_path / "y.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not valid YAML {expected}"  # one line, no "<unicode..."


def test_an_error_in_an_override_names_the_override_and_one_in_the_file_the_file(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("train:\n  epochs: 3\n")
    for source in (path, None, {"train": {"epochs": 3}}, Config()):
        with pytest.raises(ConfigError) as info:
            load_config(source, ["model.fusion=mean", "train.epochs=abc"])
        assert str(info.value) == ("--set train.epochs=abc: invalid config value "
                                   "train.epochs='abc': expected int")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["nosuch.x=1"])
    assert str(info.value).startswith("--set nosuch.x=1: unknown config key(s) nosuch (")
    # a check relating fields names the overrides that break it, not one that is fine
    with pytest.raises(ConfigError) as info:
        load_config(path, ["export.k=50", "train.epochs=4", "export.max_k=20"])
    assert str(info.value) == ("--set export.k=50, --set export.max_k=20: invalid config value "
                               "export.k=50: expected in [1, export.max_k=20]")
    assert load_config(path, ["export.k=500", "export.max_k=1000"]).export.k == 500
    # the file's own error still names the file, whatever is overridden beside it
    path.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.fusion=mean"])
    assert str(info.value) == f"{path}: invalid config value train.epochs=0: expected >= 1"
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2  # an override may fix it


def test_an_unknown_key_or_section_gets_the_close_name_or_else_the_names_there_are(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: unknown config key(s) train.epoch (did you mean 'epochs'?)"
    with pytest.raises(ConfigError) as in_python:
        Config().train.epoch = 3
    assert "(did you mean 'epochs'?)" in str(in_python.value)  # the same suggestion
    with pytest.raises(ConfigError) as info:
        load_config({"modle": {}, "data": {"demo": {"items": 3}}})
    assert str(info.value) == ("the config mapping: unknown config key(s) data.demo.items "
                               "(did you mean 'num_items'?); modle (did you mean 'model'?)")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.zzz=1"])
    assert str(info.value) == (
        "--set train.zzz=1: unknown config key(s) train.zzz (the fields of train are epochs, "
        "batch_size, learning_rate, optimizer, strategy, devices, tpu, learning_rate_scaling, "
        "cross_replica_negatives, output_dir, cache_dir, encode_batch_size, …)")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["nosuch.x=1"])
    # a section of its own may be a modality's that this process has not registered (a
    # review restored a run of a custom modality in a process that had not imported it)
    assert str(info.value) == ("--set nosuch.x=1: unknown config key(s) nosuch (the sections "
                               f"are {', '.join(section_names())} — a modality's section? "
                               "register it (import the module that calls "
                               "tfmmrec.modalities.register) before loading this config)")
    assert "tfmmrec/config.py" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config({"nosuch": 1})  # a value, not a section: no such hint
    assert str(info.value).endswith(f"nosuch (the sections are {', '.join(section_names())})")


def test_an_empty_section_means_its_defaults(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  # epochs: 3\nexport:\n  scann:\nmodel:\n  embedding_dim: 8\n")
    assert load_config(path) == load_config(None, ["model.embedding_dim=8"])
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train=3"])
    assert str(info.value) == ("--set train=3: invalid config value train=3: expected a section "
                               "(a mapping of fields)")


@pytest.mark.parametrize("kind", ["ease", "ials", "auto"])
def test_ranking_head_refuses_the_linear_cf_block(kind):
    """The head scores the learned towers' [d] embeddings; the CF block is appended only at
    inference, so the two together failed deep in evaluation: refused up front instead."""
    assert load_config(None, ["ranking.enabled=true"]).model.linear_cf == "none"
    with pytest.raises(ConfigError, match=rf"model\.linear_cf='{re.escape(kind)}'.*ranking"):
        load_config(None, ["ranking.enabled=true", "model.user_history=true",
                           f"model.linear_cf={kind}"])


@pytest.mark.parametrize(("overrides", "expected"), [
    # a head's metric without that head
    (["train.early_stopping_metric=rmse"], r"early_stopping_metric='rmse'.*ranking\.task: "
                                           "regression"),
    (["train.early_stopping_metric=auc", "ranking.enabled=true"],
     r"early_stopping_metric='auc'.*ranking\.task: binary"),
    # a ranking-only model choosing its epochs on retrieval, which it does not train
    (["ranking.enabled=true", "ranking.retrieval_weight=0", "train.early_stopping=true"],
     r"early_stopping_metric='recall@20'.*rmse or mae for a ranking-only model"),
    (["ranking.enabled=true", "ranking.task=listwise", "ranking.retrieval_weight=0",
      "train.early_stopping=true"], r"listwise task has none"),
])
def test_early_stopping_metric_must_match_what_the_model_trains(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_a_ranking_head_can_stop_on_its_own_metric():
    config = load_config(None, ["ranking.enabled=true", "ranking.retrieval_weight=0",
                                "train.early_stopping=true", "train.early_stopping_metric=mae"])
    assert config.train.early_stopping_metric == "mae"
    binary = ["ranking.enabled=true", "ranking.task=binary", "train.early_stopping_metric=auc"]
    assert load_config(None, binary).ranking.task == "binary"


@pytest.mark.parametrize("field", ["train.output_dir", "train.cache_dir", "export.base_dir",
                                   "data.path", "data.items_file"])
@pytest.mark.parametrize("url", ["gs://bucket/run", "s3://bucket/run", "file:///tmp/run"])
def test_a_url_for_a_path_used_through_pathlib_is_refused_naming_it(field, url):
    """pathlib made gs://bucket/run the local folder gs:/bucket/run, and the run was quietly
    written there: a URL is refused at load time, in one line naming the field and value."""
    with pytest.raises(ConfigError, match=rf"{re.escape(field)}={re.escape(url)} : a URL is not "
                                          r"supported here; use a local or mounted path"):
        load_config(None, [f"{field}={url}"])


def test_a_url_assigned_in_python_is_refused_when_the_config_is_used():
    config = load_config(None)
    config.train.output_dir = "gs://bucket/run"
    with pytest.raises(ConfigError, match=r"train\.output_dir=gs://bucket/run : a URL"):
        load_config(config)


@pytest.mark.parametrize("field", ["train.tfrecords", "train.features"])
def test_tf_filesystem_paths_still_take_urls(field):
    """These are read through tf.io.gfile, which supports gs:// (and ram:// in the tests)."""
    config = load_config(None, [f"{field}=gs://bucket/records"])
    assert getattr(config.train, field.split(".")[1]) == "gs://bucket/records"


@pytest.mark.parametrize("path", ["runs/demo", "/mnt/gcs/bucket/run", "C:\\runs\\demo",
                                  "runs/a:b", "~/runs"])
def test_local_and_mounted_paths_are_accepted(path):
    assert load_config(None, [f"train.output_dir={path}"]).train.output_dir == path


def test_a_bad_section_in_the_file_is_blamed_on_the_file_not_an_override(tmp_path):
    """``train: 5`` with ``--set train.output_dir=X`` said "override ...: train is not a
    section", as if the override were wrong."""
    path = tmp_path / "c.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: invalid config value "
                                          r"train=5"):
        load_config(path, ["train.output_dir=X"])


# --- overrides named for a conflict, and fields that have no effect ---------------------------

def test_a_conflict_names_only_the_overrides_that_set_its_fields(tmp_path):
    """Two overrides that each break the same check change nothing when left out one at a
    time: the whole list was named, ``train.epochs=3`` too."""
    users = {"model": {"objective": "users", "user_history": True, "negatives": "full",
                       "history_dropout": 0.5}}
    with pytest.raises(ConfigError) as info:
        load_config(users, ["train.epochs=3", "model.negatives=in_batch",
                            "model.history_dropout=0"])
    assert str(info.value).startswith("--set model.negatives=in_batch, --set "
                                      "model.history_dropout=0: invalid config value "
                                      "model.objective='users'")
    # the same override twice: the last one is what the config holds
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=0", "train.batch_size=64", "train.epochs=0"])
    assert str(info.value).startswith("--set train.epochs=0, --set train.epochs=0: ")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=5", "train.batch_size=64", "train.epochs=0"])
    assert str(info.value) == ("--set train.epochs=0: invalid config value train.epochs=0: "
                               "expected >= 1")


def test_an_override_that_fixes_the_file_is_not_blamed_for_another_error(tmp_path):
    """Without ``data.test_fraction=0.2`` the file's own error came first, so the error
    changed and that override was named beside the wrong one."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  test_fraction: 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.test_fraction=0.2", "train.epochs=0"])
    assert str(info.value) == ("--set train.epochs=0: invalid config value train.epochs=0: "
                               "expected >= 1")
    path.write_text("data:\n  test_fraction: 1.0\ntrain:\n  epochs: 0\n")  # the file's own
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.test_fraction=0.2"])
    assert str(info.value) == f"{path}: invalid config value train.epochs=0: expected >= 1"


def test_unknown_keys_in_several_overrides_name_each_of_them():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=3", "nosuch.x=1", "train.epoch=2"])
    assert str(info.value).startswith("--set nosuch.x=1, --set train.epoch=2: unknown config "
                                      "key(s) nosuch (")


def test_a_conflict_whose_error_names_no_field_says_so_rather_than_naming_every_override():
    """A plugin section's error that names no field, broken by any two of three overrides:
    none changes it alone, so the overrides involved cannot be told from the others."""

    @dataclasses.dataclass
    class KnobsTowerConfig:
        enabled: bool = True
        a: bool = False
        b: bool = False
        c: bool = False

        def __post_init__(self):
            if self.a + self.b + self.c > 1:
                raise ConfigError("at most one knob may be on")

    register_tower_section("knobs", KnobsTowerConfig)
    try:
        with pytest.raises(ConfigError) as info:
            load_config(None, ["train.epochs=3", "knobs.a=true", "knobs.b=true",
                               "knobs.c=true"])
    finally:
        unregister_tower_section("knobs")
    assert str(info.value) == ("defaults with the --set overrides (the error names no field, "
                               "so which of them it involves is not known): at most one knob "
                               "may be on")


@pytest.fixture
def inert_warnings(monkeypatch, caplog):
    """The no-effect warnings ``load_config`` logs from here on (each is logged once per
    process, so the record of earlier tests is cleared)."""
    import tfmmrec.config as config_module

    monkeypatch.setattr(config_module, "_WARNED", set(), raising=False)
    caplog.set_level(logging.WARNING, logger="tfmmrec")
    return lambda: [r.getMessage() for r in caplog.records
                    if r.name == "tfmmrec.config" and "has no effect" in r.getMessage()]


# (override, the condition in the config that gives it no effect, the warning's text)
INERT = [
    ("model.item_id_dropout=0.3", [],
     "model.item_id_dropout=0.3 has no effect: model.item_id_embedding is false; set "
     "model.item_id_embedding: true, or remove model.item_id_dropout"),
    ("model.item_id_dropout=0.3", ["model.item_id_embedding=true", "text.enabled=false",
                                   "image.enabled=false", "audio.enabled=false",
                                   "facets.enabled=false"],
     "model.item_id_dropout=0.3 has no effect: every tower section is disabled"),
    ("model.user_id_dropout=0.2", ["model.user_id_embedding=false"],
     "model.user_id_dropout=0.2 has no effect: model.user_id_embedding is false"),
    ("model.history_dropout=0.5", [],
     "model.history_dropout=0.5 has no effect: model.user_history is false"),
    ("model.history_half_life=20", [], "model.history_half_life=20 has no effect"),
    ("model.history_max_length=50", [], "model.history_max_length=50 has no effect"),
    ("model.feature_dropout_shared=true", ["model.feature_dropout={image: 0}"],
     "model.feature_dropout_shared=True has no effect: no model.feature_dropout rate"),
    ("model.alignment_rows=64", ["model.alignment_weight=0"],
     "model.alignment_rows=64 has no effect: model.alignment_weight is 0"),
    ("model.alignment_weight=1.0", ["ranking.enabled=true", "ranking.retrieval_weight=0"],
     "model.alignment_weight=1.0 has no effect: a ranking-only model"),
    ("model.fusion_selection_metric=ndcg@10", [],
     "model.fusion_selection_metric='ndcg@10' has no effect: model.fusion_selection is none"),
    ("model.linear_cf_rank=64", [], "model.linear_cf_rank=64 has no effect: model.linear_cf "
     "is none; set model.linear_cf (e.g. ease), or remove model.linear_cf_rank"),
    ("model.linear_cf_half_life=10", [], "model.linear_cf_half_life=10 has no effect"),
    ("train.validation_carves=3", [],
     "train.validation_carves=3 has no effect: train.early_stopping is false; set "
     "train.early_stopping: true, or remove train.validation_carves"),
    ("train.early_stopping_patience=5", [], "train.early_stopping_patience=5 has no effect"),
    ("train.early_stopping_smoothing=0", [], "train.early_stopping_smoothing=0 has no effect"),
    ("train.early_stopping_metric=ndcg@10", [],
     "train.early_stopping_metric='ndcg@10' has no effect: train.early_stopping is false"),
]


@pytest.mark.parametrize(("override", "condition", "expected"), INERT,
                         ids=[f"{o}-{len(c)}" for o, c, _ in INERT])
def test_a_field_set_where_it_has_no_effect_is_one_warning_naming_it_and_the_fix(
        inert_warnings, override, condition, expected):
    config = load_config(None, [*condition, override])
    load_config(config)  # loaded again (the CLI, then train): still one warning
    messages = inert_warnings()
    assert len(messages) == 1 and messages[0].startswith(expected), messages


@pytest.mark.parametrize(("override", "enabling"), [
    ("model.item_id_dropout=0.3", "model.item_id_embedding=true"),
    ("model.user_id_dropout=0.2", "model.user_id_embedding=true"),
    ("model.history_dropout=0.5", "model.user_history=true"),
    ("model.feature_dropout_shared=true", "model.feature_dropout={image: 0.5}"),
    ("model.alignment_rows=64", "model.alignment_weight=0.5"),
    ("model.linear_cf_rank=64", "model.linear_cf=ease"),
    ("train.validation_carves=3", "train.early_stopping=true"),
    ("train.early_stopping_metric=ndcg@10", "model.linear_cf=ease"),  # the CF is chosen on it
])
def test_the_same_field_where_it_has_an_effect_is_no_warning(inert_warnings, override,
                                                             enabling):
    load_config(None, [enabling, override] + (["model.user_history=true"]
                                              if "linear_cf=" in enabling else []))
    assert inert_warnings() == []


def test_a_default_value_set_explicitly_is_no_warning(inert_warnings):
    load_config({"model": {"item_id_dropout": 0.0, "history_dropout": 0.0,
                           "linear_cf_rank": 128},
                 "train": {"validation_carves": 1, "early_stopping_patience": 3}})
    assert inert_warnings() == []


@pytest.mark.parametrize("source", [None, *sorted((REPO / "configs").glob("*.yaml"))],
                         ids=lambda p: "defaults" if p is None else p.name)
def test_the_shipped_configs_and_the_demo_set_no_field_without_effect(inert_warnings, source):
    load_config(source)
    assert inert_warnings() == []


def test_a_field_assigned_in_python_is_warned_about_when_the_config_is_used(inert_warnings):
    config = Config()
    config.train.validation_carves = 3
    load_config(config)
    assert inert_warnings() == ["train.validation_carves=3 has no effect: train.early_stopping "
                                "is false; set train.early_stopping: true, or remove "
                                "train.validation_carves"]


def test_a_config_derived_with_overrides_from_a_loaded_one_is_not_warned_about(
        inert_warnings):
    """Early stopping trains its carves with ``train.early_stopping=false``: the carve
    settings it reads must not be reported as having no effect."""
    config = load_config(None, ["train.early_stopping=true", "train.validation_carves=3"])
    load_config(config, ["train.early_stopping=false", "model.fusion_selection=none"])
    assert inert_warnings() == []

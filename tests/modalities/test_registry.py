"""The modality registry: one list of specs that data, towers, cache, TFRecords and export read.

The second half registers a tiny fake modality ("vector": ``.npy`` files of three floats) the
way a user would add one — one module (this one) defining its tower-config dataclass, encoder
and spec, plus ``modalities.register`` — and shows that the config (its ``vector:`` section,
``model.feature_dropout`` keys, the model-defining sections ``restore`` checks), dataset
loading, the encoder factory, the feature cache, TFRecord item records, the warmup requests and
the export's serving functions (``query_vector``, ``embed_item_content``,
``recommend_session``'s ``viewed_vector``), multi-process ``prepare`` (spawned workers import
the spec by class), the serving client (``client.query_vector``) and ``tfmmrec query
--vector`` all pick it up with no other change. Not covered here: training a model end to end
with it (``Workspace`` and the trainer iterate ``catalog.modalities`` and ``config.tower(m)``
the same way, but a full run is too slow for a unit test).
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import tensorflow as tf

from tfmmrec import modalities
from tfmmrec.config import (
    AudioTowerConfig,
    Config,
    ConfigSection,
    ImageTowerConfig,
    check_same_model,
    load_config,
    model_sections,
)
from tfmmrec.data.dataset import ModalityColumns, load_dataset
from tfmmrec.errors import ConfigError, MediaDecodeError
from tfmmrec.modalities.base import FileModality, bytes_feature, int_feature
from tfmmrec.towers.base import Encoder

REPO = Path(__file__).resolve().parents[2]


# --- the registry itself -----------------------------------------------------------------------


def test_builtin_modalities_are_registered_in_order():
    assert modalities.names() == ("text", "image", "audio", "facets")
    assert [type(s).__name__ for s in modalities.specs()] == [
        "TextModality", "ImageModality", "AudioModality", "FacetsModality"]


def test_unknown_modality_is_a_config_error_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown modality 'smell'.*text, image, audio"):
        modalities.get("smell")


def test_registering_a_name_twice_or_a_non_spec_is_refused():
    with pytest.raises(ValueError, match="'text' is already registered"):
        modalities.register(modalities.TextModality())
    with pytest.raises(TypeError, match="ModalitySpec"):
        modalities.register("text")


def test_one_set_of_preprocessing_defaults_the_config_dataclasses():
    assert modalities.default_settings() == {
        "image_size": ImageTowerConfig().image_size, "sample_rate": 16000,
        "max_seconds": AudioTowerConfig().max_seconds}
    assert modalities.default_settings() == {"image_size": 64, "sample_rate": 16000,
                                             "max_seconds": 2.0}


def test_settings_from_config_follow_the_config_sections():
    config = load_config(None, ["image.image_size=40", "audio.max_seconds=1.5"])
    assert modalities.settings_from_config(config) == {"image_size": 40, "sample_rate": 16000,
                                                       "max_seconds": 1.5}


def test_resolve_settings_refuses_unknown_names_and_a_second_audio_rate():
    assert modalities.resolve_settings({"image_size": 16})["image_size"] == 16
    with pytest.raises(ConfigError, match=r"unknown preprocessing setting.*image_width"):
        modalities.resolve_settings({"image_width": 16})
    with pytest.raises(ConfigError, match=r"sample_rate=44100.*16000"):
        modalities.resolve_settings({"sample_rate": 44100})


def test_encode_catalog_defaults_are_the_config_defaults(tiny_workspace):
    """No caller-side 224 px / 10 s defaults any more: a bare raw_loader uses 64 px."""
    from tfmmrec.towers.cache import raw_loader

    catalog = tiny_workspace.dataset.catalog
    present = np.flatnonzero(catalog.presence("image"))[:2].tolist()
    batch, good = raw_loader(catalog, "image")(present, [])
    assert good == present
    assert batch.shape == (2, 64, 64, 3)


# --- what each built-in spec answers -----------------------------------------------------------


def test_content_keys_hash_text_bytes_and_file_bytes(tmp_path):
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF....")
    assert modalities.get("text").content_key("a film") == hashlib.sha1(b"a film").hexdigest()
    assert modalities.get("text").content_key("") is None
    assert modalities.get("audio").content_key(clip) == hashlib.sha1(b"RIFF....").hexdigest()
    assert modalities.get("image").content_key(None) is None


def test_fill_zeroes_absent_items_in_each_encoder_input_shape():
    settings = {"image_size": 4, "sample_rate": 16000, "max_seconds": 1.0}
    text = modalities.get("text").fill(["a", None, "b"], settings)
    assert text.tolist() == ["a", "", "b"]
    image = modalities.get("image").fill([None, np.ones((4, 4, 3), np.float32)], settings)
    assert image.shape == (2, 4, 4, 3) and image[0].sum() == 0 and image[1].sum() == 48
    audio = modalities.get("audio").fill([np.ones(3, np.float32), None], settings)
    np.testing.assert_array_equal(audio["waveform"], [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(audio["length"], [3, 0])


def test_content_spec_pack_and_unpack_round_trip():
    settings = modalities.default_settings()
    audio = modalities.get("audio")
    assert set(audio.content_spec(settings)) == {"waveform", "length"}
    batch = {"waveform": np.zeros((1, 2), np.float32), "length": np.array([2], np.int32)}
    assert audio.unpack(audio.pack(batch), settings) is not None
    assert set(audio.unpack(audio.pack(batch), settings)) == {"waveform", "length"}
    image = modalities.get("image")
    assert image.content_spec(settings) == {
        "image": tf.TensorSpec([None, 64, 64, 3], tf.float32)}
    assert image.unpack({"image": "pixels", "other": 1}, settings) == "pixels"


def test_audio_gather_trims_to_the_longest_selected_clip():
    batch = {"waveform": tf.constant([[1.0, 2, 3, 4], [5.0, 6, 0, 0]]),
             "length": tf.constant([4, 2])}
    rows = modalities.get("audio").gather(batch, [1])
    np.testing.assert_array_equal(rows["waveform"].numpy(), [[5.0, 6.0]])


def test_warmup_samples_decode_with_each_request_decoder():
    from tfmmrec.config import ServingLimitsConfig

    settings, limits = modalities.default_settings(), ServingLimitsConfig()
    for spec in modalities.specs():
        decoded = spec.decode_request(tf.constant(list(spec.warmup_sample())),
                                      settings, limits)
        first = tf.nest.flatten(decoded)[0]
        assert first.shape[0] == 1, spec.name


# --- no import cycle between the encoder factory and the encoders --------------------------------


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_encoder_modules_do_not_import_the_factory_and_the_factory_not_them():
    towers = REPO / "tfmmrec" / "towers"
    for name in ("base", "text", "image", "audio"):
        assert "tfmmrec.towers.encoders" not in _imports(towers / f"{name}.py"), name
    factory = _imports(towers / "encoders.py")
    assert not factory & {"tfmmrec.towers.text", "tfmmrec.towers.image", "tfmmrec.towers.audio"}
    # and no layer below the towers imports them at module level
    for path in (REPO / "tfmmrec" / "modalities").glob("*.py"):
        assert not any(m.startswith("tfmmrec.towers") for m in _imports(path)), path


def test_consumers_hold_no_modality_name_branches():
    """The layers the registry replaced do not test modality names any more."""
    files = ["data/dataset.py", "data/tfrecords.py", "towers/cache.py", "towers/features.py",
             "towers/encoders.py", "beam/encode.py", "export/warmup.py", "export/catalog.py",
             "export/module.py", "export/loader.py", "config.py", "training/trainer.py",
             "towers/item.py", "towers/query.py"]
    for name in files:
        source = (REPO / "tfmmrec" / name).read_text()
        for modality in ("text", "image", "audio"):
            assert f'modality == "{modality}"' not in source, (name, modality)
            assert f'if "{modality}" in' not in source, (name, modality)
            assert f'"viewed_{modality}"' not in source, (name, modality)
        # no list of the built-in modalities (config sections, signature inputs)
        assert '"text", "image", "audio"' not in source, name


# --- adding a modality: one module plus its registration ---------------------------------------


@dataclass
class VectorTowerConfig(ConfigSection):  # assignments in Python checked as YAML's
    enabled: bool = True
    trainable: bool = False
    scale: float = 2.0
    length: int = 3  # a preprocessing setting (``vector_length``): recorded by prepare

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError(f"invalid config value vector.scale={self.scale!r}: "
                              "expected > 0")


class VectorEncoder(Encoder):
    """A weightless encoder: ``scale * vector``."""

    modality = "vector"
    feature_dim = 3

    def __init__(self, config: VectorTowerConfig, **kwargs):
        super().__init__({"kind": "scale", "scale": config.scale}, tower_config=config, **kwargs)
        self.scale = config.scale

    def call(self, vectors, training=False):
        return tf.cast(vectors, tf.float32) * self.scale


def build_vector_encoder(config: VectorTowerConfig) -> VectorEncoder:
    return VectorEncoder(config, name="vector_encoder")


class VectorModality(FileModality):
    """``.npy`` files holding three float32 values."""

    name = "vector"
    tower_config_class = VectorTowerConfig
    encoder_builder = f"{__name__}:build_vector_encoder"
    settings_fields: ClassVar[Mapping[str, str]] = {"vector_length": "length"}
    column_names = frozenset({"vector"})
    extensions = (".npy",)

    def load_file(self, path, settings):
        try:
            vector = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise MediaDecodeError(f"cannot read vector — {path} ({exc})") from exc
        if vector.shape != (3,):
            raise MediaDecodeError(f"vector of shape {vector.shape} — {path} — expected (3,)")
        return vector

    def batch(self, values):
        return np.stack(values)

    def fill(self, values, settings):
        return np.stack([np.zeros(3, np.float32) if v is None else v for v in values])

    def encoder_input_spec(self, settings):
        return tf.TensorSpec([None, 3], tf.float32)

    def record_features(self, value, settings, failed):
        data = b""
        if value is not None:
            try:
                data = self.load_file(value, settings).astype("<f4").tobytes()
            except MediaDecodeError:
                failed.setdefault(self.name, []).append(value)
        return {"vector": bytes_feature(data), "vector_present": int_feature(bool(data))}

    def record_spec(self):
        return {"vector": tf.io.FixedLenFeature([], tf.string),
                "vector_present": tf.io.FixedLenFeature([], tf.int64)}

    def parse_record(self, parsed, settings):
        width = settings["vector_length"]  # absent items hold b"": zero-padded to the width
        vectors = tf.io.decode_raw(parsed["vector"], tf.float32, fixed_length=4 * width)
        return {"vector": tf.reshape(vectors, [-1, width]),
                "vector_present": parsed["vector_present"] > 0}

    def decode_request(self, request, settings, limits):
        return tf.reshape(tf.io.decode_raw(request, tf.float32), [-1, 3])

    query_help = "a .npy file of three floats (repeatable)"

    def request_values(self, values):
        """A client sends the raw little-endian floats :meth:`decode_request` reads."""
        paths = [values] if isinstance(values, str | Path) else values
        return np.array([np.load(p).astype("<f4").tobytes() for p in paths], dtype=object)

    def warmup_sample(self):
        return np.array([np.zeros(3, "<f4").tobytes()], dtype=object)

    def placeholder(self):
        return np.zeros(3, "<f4").tobytes()


@pytest.fixture
def vector_modality():
    spec = modalities.register(VectorModality())
    try:
        yield spec
    finally:
        modalities.unregister("vector")
    assert "vector" not in modalities.names()


@pytest.fixture
def vector_folder(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "vectors").mkdir(parents=True)
    np.save(root / "vectors" / "a.npy", np.array([1.0, 2.0, 3.0], np.float32))
    np.save(root / "vectors" / "b.npy", np.array([0.5, 0.0, -1.0], np.float32))
    (root / "items.csv").write_text("item_id,title,vector\n"
                                    "a,First film,vectors/a.npy\n"
                                    "b,Second film,vectors/b.npy\n"
                                    "c,Third film,\n")
    (root / "interactions.csv").write_text("user_id,item_id\nu1,a\nu1,b\nu2,c\nu2,a\n")
    return root


def test_a_registered_modality_gets_its_config_section(vector_modality, tmp_path):
    """``vector:`` is a config section like ``image:``: parsed from YAML and overrides,
    validated, keyed in ``model.feature_dropout``, saved with a run and checked by restore."""
    path = tmp_path / "job.yaml"
    path.write_text("vector:\n  scale: 3.0\nmodel:\n  feature_dropout: {vector: 0.5}\n")
    config = load_config(path)
    assert config.tower("vector") == VectorTowerConfig(scale=3.0) == config.vector
    assert vector_modality.tower_config(config).scale == 3.0
    assert config.model.feature_dropout == {"vector": 0.5}
    assert Config().tower("vector") == VectorTowerConfig()
    assert list(config.to_dict()) == ["data", "text", "image", "audio", "facets", "vector", "model",
                                      "ranking", "train", "eval", "export"]
    config.to_yaml(tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == config
    with pytest.raises(ConfigError, match=r"vector\.scale=-1"):
        load_config(path, ["vector.scale=-1"])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) vector\.scal\b"):
        load_config(path, ["vector.scal=2"])
    with pytest.raises(ConfigError, match=r"section vector has no field 'scal' \(did you mean"):
        config.vector.scal = 2.0
    with pytest.raises(ConfigError, match=r"vector\.scale='2': expected float"):
        config.vector.scale = "2"
    # restore's architecture check covers the new section
    assert "vector" in model_sections()
    with pytest.raises(ConfigError, match=r"vector\.scale: 3\.0 in the run, 4\.0 requested"):
        check_same_model(config, load_config(path, ["vector.scale=4.0"]), "the run")


def test_a_modality_named_like_a_mask_key_is_refused():
    """Batches key modality m's presence mask ``m + "_mask"``: a modality "text_mask" was
    registered and its content then overwrote text's mask in every content batch."""
    class TextMask(VectorModality):
        name = "text_mask"

    try:
        with pytest.raises(ValueError, match=r"name 'text_mask' ends in '_mask'.*text's"):
            modalities.register(TextMask())
        assert "text_mask" not in modalities.names()
    finally:  # without the check it was registered: leave the registry as it was
        modalities.unregister("text_mask")


def test_an_unregistered_modality_section_is_an_unknown_key(tmp_path):
    assert "vector" not in modalities.names()
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) vector\b"):
        load_config(None, ["vector.scale=3.0"])
    with pytest.raises(ConfigError, match=r"model\.feature_dropout='vector'.*text, image, audio"):
        load_config(None, ["model.feature_dropout={vector: 0.5}"])


def test_a_modality_cannot_take_a_section_another_class_holds():
    class OtherText(VectorModality):
        name = "text"

    with pytest.raises(ValueError, match="already registered"):
        modalities.register(OtherText())

    class Clash(VectorModality):
        name = "vector"
        tower_config_class = ImageTowerConfig

    modalities.register(VectorModality())
    try:
        modalities.unregister("vector")
        from tfmmrec.config import register_tower_section

        register_tower_section("vector", VectorTowerConfig)
        with pytest.raises(ValueError, match="already VectorTowerConfig"):
            modalities.register(Clash())
    finally:
        modalities.unregister("vector")
        from tfmmrec.config import unregister_tower_section

        unregister_tower_section("vector")
    assert "vector" not in modalities.names()


def test_a_registered_modality_is_read_from_the_items_table(vector_modality, vector_folder):
    catalog = load_dataset(str(vector_folder)).catalog
    assert catalog.modalities == ("text", "vector")
    assert catalog.columns.of("vector") == ("vector",)
    assert catalog.columns.text == ("title",)  # the vector column is not taken for text
    assert catalog.columns == ModalityColumns(text=("title",), extra=(("vector", ("vector",)),))
    assert catalog.presence("vector").tolist() == [True, True, False]
    assert catalog.values("vector")[2] is None


def test_a_registered_modality_is_encoded_and_cached_by_the_shared_code(
        vector_modality, vector_folder, tmp_path):
    from tfmmrec.towers.cache import content_keys, encode_catalog
    from tfmmrec.towers.encoders import build_encoder

    catalog = load_dataset(str(vector_folder)).catalog
    encoder = build_encoder("vector", VectorTowerConfig(scale=2.0))
    assert isinstance(encoder, VectorEncoder)
    assert content_keys(catalog, "vector")[0] == hashlib.sha1(
        (vector_folder / "vectors" / "a.npy").read_bytes()).hexdigest()
    content, stats = encode_catalog(catalog, encoder, tmp_path / "cache", progress=False)
    np.testing.assert_allclose(content.values, [[2, 4, 6], [1, 0, -2], [0, 0, 0]])
    assert content.mask.tolist() == [True, True, False]
    assert (stats.reused, stats.computed) == (0, 2)
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()] == ["vector"]
    _, again = encode_catalog(catalog, encoder, tmp_path / "cache", progress=False)
    assert (again.reused, again.computed) == (2, 0)
    rebuilt = Encoder.from_config(encoder.get_config())
    assert isinstance(rebuilt, VectorEncoder) and rebuilt.scale == 2.0


def test_a_registered_modality_reaches_records_and_warmup(vector_modality, vector_folder):
    from tfmmrec.data import tfrecords
    from tfmmrec.export.warmup import warmup_requests

    path = str(vector_folder / "vectors" / "b.npy")
    failed: dict = {}
    example = tfrecords._item_example((0, "b", {"text": "Second film", "vector": path}),
                                      modalities.default_settings(), failed)
    features = example.features.feature
    assert np.frombuffer(features["vector"].bytes_list.value[0], "<f4").tolist() == [
        0.5, 0.0, -1.0]
    assert features["vector_present"].int64_list.value == [1]
    assert features["text"].bytes_list.value == [b"Second film"]
    assert failed == {}
    requests = warmup_requests(("text", "vector"), "u1", 5)
    assert requests["query_vector"]["vector"][0] == np.zeros(3, "<f4").tobytes()


def test_a_registered_modality_goes_through_prepare_and_its_manifest(vector_modality,
                                                                     vector_folder, tmp_path):
    """``tfmmrec prepare`` writes its records, the manifest keeps its preprocessing setting
    (as a top-level key, like ``image_size``) and the item shards read back its vectors."""
    from tfmmrec.data import tfrecords

    config = load_config(None, [f"data.path={vector_folder}", "data.split=none",
                                "vector.length=3"])
    manifest = tfrecords.write_tfrecords(config, tmp_path / "records", workers=1,
                                         progress=False)
    assert manifest.modalities == ["text", "vector"]
    assert manifest.settings == {**modalities.settings_from_config(config)}
    assert manifest.settings["vector_length"] == 3 and manifest.settings["image_size"] == 64
    loaded = tfrecords.load_manifest(tmp_path / "records")
    assert loaded == manifest and loaded.to_dict() == manifest.to_dict()
    on_disk = json.loads((tmp_path / "records" / "manifest.json").read_text())
    assert on_disk["vector_length"] == 3 and list(on_disk)[:2] == ["format_version",
                                                                    "image_size"]
    tfrecords.check_compatible(loaded, config)  # the same settings: accepted
    with pytest.raises(ConfigError, match="vector_length: prepared 3, config 4"):
        tfrecords.check_compatible(loaded, load_config(config, ["vector.length=4"]))
    batch = next(iter(tfrecords.items_dataset(loaded, 8)))
    np.testing.assert_allclose(batch["vector"].numpy(), [[1, 2, 3], [0.5, 0, -1], [0, 0, 0]])
    assert batch["vector_present"].numpy().tolist() == [True, True, False]


def test_a_registered_modality_is_prepared_by_worker_processes(vector_modality,
                                                                vector_folder, tmp_path):
    """``prepare`` with a process pool: spawned workers start with the built-in modalities
    only; the item jobs name the registered specs (``modalities.references``) and each worker
    imports and registers them, so its records hold the vector fields too."""
    from tfmmrec.data import tfrecords

    config = load_config(None, [f"data.path={vector_folder}", "data.split=none"])
    manifest = tfrecords.write_tfrecords(config, tmp_path / "records", workers=2, shards=2,
                                         progress=False)
    assert len(manifest.shards["items"]) == 2
    batch = next(iter(tfrecords.items_dataset(tfrecords.load_manifest(tmp_path / "records"),
                                              8)))
    np.testing.assert_allclose(batch["vector"].numpy(), [[1, 2, 3], [0.5, 0, -1], [0, 0, 0]])
    assert batch["vector_present"].numpy().tolist() == [True, True, False]
    assert modalities.references()[-1] == "tests.modalities.test_registry:VectorModality"


def test_a_spec_workers_cannot_import_is_refused_before_they_start(vector_folder, tmp_path):
    from tfmmrec.data import tfrecords

    class LocalVector(VectorModality):  # defined in a function: no worker can import it
        pass

    modalities.register(LocalVector())
    try:
        config = load_config(None, [f"data.path={vector_folder}", "data.split=none"])
        with pytest.raises(ConfigError, match=r"LocalVector cannot be imported by a worker "
                                              r"process \(defined in a function\).*--workers 1"):
            tfrecords.write_tfrecords(config, tmp_path / "records", workers=2, shards=2,
                                      progress=False)
        manifest = tfrecords.write_tfrecords(config, tmp_path / "one", workers=1,
                                             progress=False)  # in this process: fine
        assert manifest.modalities == ["text", "vector"]
    finally:
        modalities.unregister("vector")


def test_require_registers_missing_specs_and_names_one_it_cannot_import():
    reference = "tests.modalities.test_registry:VectorModality"
    assert "vector" not in modalities.names()
    try:
        modalities.require([*modalities.references(), reference])  # built-ins: kept as they are
        assert modalities.names() == ("text", "image", "audio", "facets", "vector")
        assert isinstance(modalities.get("vector"), VectorModality)
        modalities.require([reference])  # already registered: nothing to do
    finally:
        modalities.unregister("vector")
    with pytest.raises(ConfigError, match=r"modality spec no_such_plugin\.specs:Smell cannot be "
                                          r"imported in process \d+ \(ModuleNotFound"):
        modalities.require(["no_such_plugin.specs:Smell"])
    with pytest.raises(ConfigError, match=r"'text' is tfmmrec\.modalities\.text:TextModality "
                                          r"in process \d+, not tests\.modalities"):
        modalities.require(["tests.modalities.test_registry:OtherTextSpec"])


def test_installed_plugins_are_registered_from_their_entry_points(monkeypatch, caplog):
    """A package declaring ``[project.entry-points."tfmmrec.modalities"]`` gets its modality
    into every process that imports tfmmrec (the ``tfmmrec`` command, spawned workers); a
    plugin that cannot be imported is skipped with a warning naming it."""
    import importlib.metadata

    from tfmmrec.modalities import registry

    group = registry.ENTRY_POINT_GROUP
    plugins = [importlib.metadata.EntryPoint("vector", "tests.modalities.test_registry:"
                                             "VectorModality", group),
               importlib.metadata.EntryPoint("smell", "no_such_plugin.specs:Smell", group)]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [p for p in plugins if p.group == group])
    assert "vector" not in modalities.names()
    try:
        with caplog.at_level("WARNING", logger="tfmmrec.modalities.registry"):
            loaded = modalities.load_entry_points()
        assert loaded == ["tests.modalities.test_registry:VectorModality"]
        assert modalities.names() == ("text", "image", "audio", "facets", "vector")
        assert "modality plugin 'smell' (no_such_plugin.specs:Smell) not loaded" in caplog.text
        assert load_config(None, ["vector.scale=3.0"]).tower("vector").scale == 3.0
    finally:
        modalities.unregister("vector")


class OtherTextSpec(VectorModality):
    """Claims the name of a built-in: a worker refuses to mix it up with the registered one."""

    name = "text"


def test_a_registered_modality_gets_its_serving_functions(vector_modality):
    """The export's ``<modality>_query`` and ``embed_item_content`` come from the spec."""
    from tfmmrec.export.module import ServingTowers
    from tfmmrec.towers.item import ItemTower
    from tfmmrec.towers.query import QueryTower

    encoder = build_vector_encoder(VectorTowerConfig(scale=2.0))
    item_tower = ItemTower(("vector",), 4)
    towers = ServingTowers(QueryTower(["u1"], 4), item_tower, {"vector": encoder},
                           training_item_ids=np.array(["a", "b"]),
                           training_item_embeddings=np.zeros((2, 4), np.float32))
    assert towers.content_spec() == {
        "item_id": tf.TensorSpec([None], tf.string),
        "vector_mask": tf.TensorSpec([None], tf.bool),
        "vector": tf.TensorSpec([None, 3], tf.float32)}
    vectors = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]], np.float32)
    request = tf.constant([row.astype("<f4").tobytes() for row in vectors])
    queried = towers.vector_query(request).numpy()
    expected = item_tower.embed_single("vector", encoder(vectors)).numpy()
    np.testing.assert_allclose(queried, expected, rtol=1e-6)
    embedded = towers.embed_item_content({"item_id": tf.constant(["a", "b"]),
                                          "vector": tf.constant(vectors),
                                          "vector_mask": tf.constant([True, True])}).numpy()
    fused = item_tower({"vector": encoder(vectors), "vector_mask": tf.ones(2)}).numpy()
    np.testing.assert_allclose(embedded, fused, rtol=1e-6)


VECTORS = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [-1.0, 1.0, 0.0]], np.float32)


def vector_serving_module():
    """A retrieval serving module over three items with only the vector tower (ids a, b, c,
    the rows of ``VECTORS``): what an export of a vector-only model serves."""
    from tfmmrec.export.index.brute_force import BruteForceIndex
    from tfmmrec.export.module import RetrievalServingModule, ServingTowers
    from tfmmrec.towers.item import ItemTower
    from tfmmrec.towers.query import QueryTower

    encoder = build_vector_encoder(VectorTowerConfig(scale=2.0))
    ids = np.array(["a", "b", "c"])
    towers = ServingTowers(QueryTower(["u1"], 4), ItemTower(("vector",), 4),
                           {"vector": encoder}, training_item_ids=ids,
                           training_item_embeddings=np.zeros((3, 4), np.float32))
    items = towers.embed_item_content({"item_id": tf.constant(ids),
                                       "vector": tf.constant(VECTORS),
                                       "vector_mask": tf.ones(3, tf.bool)}).numpy()
    return RetrievalServingModule(towers, items, BruteForceIndex(items, ids, 3), item_ids=ids,
                                  default_k=3, max_k=3, session_user_weight=0.0)


def test_a_registered_modality_is_a_viewed_input_of_session_requests(vector_modality):
    """``recommend_session`` takes ``viewed_<modality>`` for every registered modality: with
    no session items and the user weighing 0, the viewed vector alone is the query, so the
    result is ``query_vector``'s."""
    vectors = VECTORS
    module = vector_serving_module()
    inputs = module.recommend_session.input_signature
    assert [spec.name for spec in inputs] == [
        "session_item_ids", "user_id", "k", "exclude_item_ids",
        *(f"viewed_{m}" for m in modalities.names())]
    assert inputs[-1].name == "viewed_vector"
    request = tf.constant([vectors[1].astype("<f4").tobytes()])
    by_session = module.recommend_session(tf.zeros([1, 0], tf.string),
                                          viewed_vector=request)
    by_query = module.query_vector(request)
    np.testing.assert_array_equal(by_session["item_ids"].numpy(),
                                  by_query["item_ids"].numpy())
    np.testing.assert_allclose(by_session["scores"].numpy(), by_query["scores"].numpy(),
                               rtol=1e-5)
    assert by_session["item_ids"].numpy()[0, 0] == b"b"
    # a modality the model has no tower for is refused, not ignored
    with pytest.raises(tf.errors.InvalidArgumentError, match="viewed_text: this model has no"):
        module.recommend_session(tf.zeros([1, 0], tf.string), viewed_text=tf.constant(["x"]))


# --- the serving client and `tfmmrec query`: one shortcut per registered modality ---------------


@pytest.fixture
def served_vector_module(monkeypatch):
    """``ServingClient.predict`` answered by the vector serving module in process (the wire is
    signature-agnostic and tested in tests/serving): records each call's signature and inputs
    and runs them through the module's signature function, matched by input alias (the
    ``TensorSpec`` names TF Serving exposes), so a request a client builds wrongly fails."""
    import inspect

    from tfmmrec.serving.client import ServingClient

    module, calls = vector_serving_module(), []

    def predict(self, signature, inputs):
        calls.append((signature, dict(inputs)))
        function = getattr(module, signature)
        parameters = [p for p in inspect.signature(function.python_function).parameters
                      if p != "self"]
        by_alias = dict(zip((spec.name for spec in function.input_signature), parameters,
                            strict=True))
        outputs = function(**{by_alias[alias]: tf.constant(value)
                              for alias, value in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    monkeypatch.setattr(ServingClient, "predict", predict)
    return module, calls


def test_a_registered_modality_gets_its_client_shortcut(vector_modality, served_vector_module,
                                                        tmp_path):
    """``client.query_vector(paths)`` and ``client.query("vector", ...)`` exist once the spec is
    registered: the request is the spec's ``request_values`` (raw floats, not the .npy file)."""
    from tfmmrec.serving.client import ServingClient

    module, calls = served_vector_module
    np.save(tmp_path / "b.npy", VECTORS[1])
    client = ServingClient("127.0.0.1:1", rest=True)
    assert "query_vector" in dir(client)
    top = client.query_vector([tmp_path / "b.npy"], k=2)
    assert calls[-1][0] == "query_vector"
    assert calls[-1][1]["vector"].tolist() == [VECTORS[1].astype("<f4").tobytes()]
    assert calls[-1][1]["k"] == 2
    expected = module.query_vector(tf.constant([VECTORS[1].tobytes()]), k=2)
    np.testing.assert_array_equal(top["item_ids"], expected["item_ids"].numpy())
    assert top["item_ids"][0, 0] == b"b"
    again = client.query("vector", str(tmp_path / "b.npy"), k=2)
    np.testing.assert_array_equal(again["item_ids"], top["item_ids"])


def test_a_registered_modality_gets_its_query_option(vector_modality, served_vector_module,
                                                     tmp_path, capsys):
    """``tfmmrec query --vector FILE`` (an option generated from the spec: help text and
    metavar included), printed like ``--text``."""
    from tfmmrec.cli import build_parser, main

    _, calls = served_vector_module
    np.save(tmp_path / "a.npy", VECTORS[0])
    np.save(tmp_path / "c.npy", VECTORS[2])
    query = build_parser()._subparsers._group_actions[0].choices["query"]
    assert "--vector FILE" in query.format_help()
    assert "a .npy file of three floats (repeatable)" in query.format_help()
    code = main(["query", "--rest", "--target", "127.0.0.1:1", "--vector",
                 str(tmp_path / "a.npy"), "--vector", str(tmp_path / "c.npy"), "--k", "1",
                 "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["query"] for row in rows] == [str(tmp_path / "a.npy"), str(tmp_path / "c.npy")]
    assert [row["item_ids"] for row in rows] == [["a"], ["c"]]
    assert calls[-1][0] == "query_vector" and len(calls[-1][1]["vector"]) == 2


def test_an_unregistered_modality_has_no_client_shortcut_or_query_option(tmp_path, capsys):
    from tfmmrec.cli import main
    from tfmmrec.serving.client import ServingClient

    assert "vector" not in modalities.names()
    client = ServingClient("127.0.0.1:1", rest=True)
    assert hasattr(client, "query_text") and not hasattr(client, "query_vector")
    with pytest.raises(ConfigError, match="unknown modality 'vector'"):
        client.query("vector", "x.npy")
    with pytest.raises(SystemExit):
        main(["query", "--rest", "--user", "u1", "--vector", "x.npy"])
    assert "unrecognized arguments: --vector x.npy" in capsys.readouterr().err


def test_a_modality_named_like_a_query_option_is_a_clear_error(capsys):
    from tfmmrec.cli import main

    class Status(VectorModality):
        name = "status"

    modalities.register(Status())
    try:
        assert main(["query", "--status"]) == 2
    finally:
        modalities.unregister("status")
    assert ("modality 'status' clashes with `tfmmrec query`'s own --status option"
            in capsys.readouterr().err)


def test_an_encode_shard_job_registers_its_modality_in_a_fresh_process(vector_modality,
                                                                       vector_folder, tmp_path):
    """``tfmmrec encode --runner``: a Beam worker process runs ``encode_shard`` on a job
    planned here; the job names the registered specs, so a fresh interpreter (no registration
    of its own) encodes the vector shard."""
    import pickle
    import subprocess
    import sys

    from tfmmrec.towers import features

    config = load_config(None, [f"data.path={vector_folder}", "data.split=none"])
    dataset = load_dataset(config.data)
    run = features.plan_encode(config, dataset, build_vector_encoder(VectorTowerConfig()),
                               str(tmp_path / "features"), shards=1, workers=1)
    (tmp_path / "job.pkl").write_bytes(pickle.dumps(next(run.todo_jobs())))
    code = ("import pickle, sys\nfrom tfmmrec.towers import features\n"
            "job = pickle.load(open(sys.argv[1], 'rb'))\n"
            "print(features.encode_shard(job, lambda raw: raw * 2)['encoded'])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.pkl")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "2"

"""Tests for the demo generator (start of the data flow): layout, determinism, reuse, signal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tfmmrec.config import DemoConfig
from tfmmrec.data.demo import GENRES, MOODS, build_demo_dataset, load_latent
from tfmmrec.errors import DataError
from tfmmrec.files import writer_token

SMALL = DemoConfig(num_items=60, num_users=40, interactions_per_user=10, seed=0)
# Big enough that the nearest-centroid probes below have a few examples per genre in each half.
SIGNAL = DemoConfig(num_items=240, num_users=120, interactions_per_user=20, seed=3)
TABLES = ("items.csv", "interactions.csv", "users.csv", "latent.csv")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("small") / "demo", SMALL)


@pytest.fixture(scope="module")
def signal(tmp_path_factory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("signal") / "demo", SIGNAL)


def read_items(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "items.csv", keep_default_na=False, dtype=str)


def genre_index(root: Path) -> np.ndarray:
    return load_latent(root).genre.map({g: i for i, g in enumerate(GENRES)}).to_numpy()


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as clip:
        return np.frombuffer(clip.readframes(clip.getnframes()), "<i2").astype(np.float64)


def media_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Fit class centroids on even rows, then classify odd rows by the nearest centroid."""
    train, test = np.arange(len(labels))[::2], np.arange(len(labels))[1::2]
    centroids = np.stack([features[train][labels[train] == c].mean(0) for c in range(len(GENRES))])
    distance = ((features[test][:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((distance.argmin(1) == labels[test]).mean())


# --- layout ---------------------------------------------------------------------------------------


def test_a_mapping_of_fields_builds_what_the_demo_config_builds(small, tmp_path):
    """The README: wherever a config is taken, a mapping works; here it was an AttributeError
    ('dict' object has no attribute 'seed')."""
    from dataclasses import asdict

    from tfmmrec.errors import ConfigError

    same = build_demo_dataset(tmp_path / "demo", asdict(SMALL))
    for table in TABLES:
        assert (same / table).read_bytes() == (small / table).read_bytes()
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) data\.demo\.num_itemz "
                                          r"\(did you mean 'num_items'\?\)"):
        build_demo_dataset(tmp_path / "other", {"num_itemz": 30})


def test_folder_has_tables_media_and_manifest(small):
    for name in (*TABLES, "demo.json"):
        assert (small / name).is_file(), name
    items = read_items(small)
    assert list(items.columns) == ["item_id", "title", "description", "image", "audio"]
    assert items.item_id.str.fullmatch(r"i\d{4}").all() and items.item_id.is_unique
    assert (items.title != "").all()
    for column, folder, suffix in (("image", "images", "png"), ("audio", "audio", "wav")):
        listed = items[column][items[column] != ""]
        assert listed.str.fullmatch(rf"{folder}/i\d{{4}}\.{suffix}").all()
        assert sorted(listed) == sorted(f"{folder}/{p.name}" for p in (small / folder).iterdir())
    manifest = json.loads((small / "demo.json").read_text())
    assert manifest["config"] == {"num_items": 60, "num_users": 40, "interactions_per_user": 10,
                                  "seed": 0}


def test_media_files_are_64px_rgb_png_and_1s_16khz_pcm16_mono_wav(small):
    items = read_items(small)
    image = Image.open(small / items.image[items.image != ""].iloc[0])
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
    with wave.open(str(small / items.audio[items.audio != ""].iloc[0])) as clip:
        assert (clip.getnchannels(), clip.getsampwidth(), clip.getframerate()) == (1, 2, 16000)
        assert clip.getnframes() == 16000


def test_interactions_are_valid_and_time_ordered_per_user(small):
    interactions = pd.read_csv(small / "interactions.csv", dtype={"user_id": str, "item_id": str})
    assert list(interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert interactions.user_id.str.fullmatch(r"u\d{3}").all()
    assert set(interactions.item_id) <= set(read_items(small).item_id)
    assert interactions.rating.between(1, 5).all()
    assert pd.api.types.is_integer_dtype(interactions.rating)
    assert pd.api.types.is_integer_dtype(interactions.timestamp)
    assert (interactions.groupby("user_id").size() == SMALL.interactions_per_user).all()
    assert not interactions.duplicated(["user_id", "item_id"]).any()
    increasing = interactions.groupby("user_id").timestamp.apply(
        lambda t: bool((np.diff(t.to_numpy()) > 0).all()))
    assert increasing.all()


def test_users_and_latent_tables(small):
    users = pd.read_csv(small / "users.csv", dtype={"user_id": str})
    assert list(users.columns) == ["user_id", "age", "occupation"]
    assert len(users) == SMALL.num_users and users.age.between(16, 80).all()
    assert users.occupation.nunique() > 1
    latent = load_latent(small)
    assert list(latent.item_id) == list(read_items(small).item_id)
    assert set(latent.genre) <= set(GENRES) and set(latent.mood) <= set(MOODS)
    assert latent.genre.nunique() == len(GENRES)


def test_some_modalities_missing_but_never_all_for_one_item(signal):
    items = read_items(signal)
    no_image, no_audio = items.image == "", items.audio == ""
    no_text = items.description == ""
    assert 0.03 < no_image.mean() < 0.2
    assert 0.03 < no_audio.mean() < 0.2
    assert 0.01 < no_text.mean() < 0.12
    assert not (no_image & no_audio & no_text).any()


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(small, tmp_path):
    again = build_demo_dataset(tmp_path / "again", SMALL)
    for name in TABLES:
        assert (again / name).read_bytes() == (small / name).read_bytes(), name
    items = read_items(small)
    for path in [*items.image[items.image != ""][:5], *items.audio[items.audio != ""][:5]]:
        assert (again / path).read_bytes() == (small / path).read_bytes(), path


def test_different_seed_gives_different_data(small, tmp_path):
    other = build_demo_dataset(tmp_path / "other", DemoConfig(**{**SMALL.__dict__, "seed": 1}))
    for name in ("items.csv", "interactions.csv"):
        assert (other / name).read_bytes() != (small / name).read_bytes(), name
    for folder in ("images", "audio"):
        assert media_bytes(other / folder) != media_bytes(small / folder), folder


# --- reuse and atomic writes ----------------------------------------------------------------------


def test_complete_build_is_reused_without_rewriting(tmp_path):
    root = build_demo_dataset(tmp_path / "demo", SMALL)
    stamp = (root / "items.csv").stat().st_mtime_ns
    assert build_demo_dataset(root, SMALL) == root
    assert (root / "items.csv").stat().st_mtime_ns == stamp


def test_other_config_or_damaged_build_is_rebuilt(tmp_path):
    root = build_demo_dataset(tmp_path / "demo", SMALL)
    bigger = DemoConfig(**{**SMALL.__dict__, "num_items": 70})
    build_demo_dataset(root, bigger)
    assert len(read_items(root)) == 70
    assert json.loads((root / "demo.json").read_text())["config"]["num_items"] == 70
    next(iter((root / "images").iterdir())).unlink()  # damaged: a listed image is gone
    build_demo_dataset(root, bigger)
    items = read_items(root)
    assert all((root / p).is_file() for p in items.image[items.image != ""])


def test_leftover_temp_dirs_are_never_used(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # atomic_path's temp siblings; pid 1 is alive: maybe another build in progress
    crashed = tmp_path / f".demo.{dead.pid}.{writer_token()}abcd1234.tmp"
    live = tmp_path / f".demo.1.{writer_token()}abcd1234.tmp"
    for partial in (crashed, live):
        partial.mkdir()
        (partial / "items.csv").write_text("item_id\njunk\n")
    root = build_demo_dataset(tmp_path / "demo", SMALL)
    assert len(read_items(root)) == SMALL.num_items
    assert not crashed.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "demo"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a tfmmrec demo"):
        build_demo_dataset(tmp_path / "mine", SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_load_latent_explains_missing_file(tmp_path):
    with pytest.raises(DataError, match="build_demo_dataset"):
        load_latent(tmp_path)


# --- every modality carries signal ----------------------------------------------------------------


def test_image_mean_colour_predicts_genre(signal):
    items, genre = read_items(signal), genre_index(signal)
    has = (items.image != "").to_numpy()
    colour = np.stack([np.asarray(Image.open(signal / p), dtype=np.float64).mean((0, 1))
                       for p in items.image[has]])
    assert nearest_centroid_accuracy(colour, genre[has]) > 0.6  # chance: 1/6


def test_audio_dominant_frequency_predicts_genre(signal):
    items, genre = read_items(signal), genre_index(signal)
    has = (items.audio != "").to_numpy()
    peak = np.array([[np.log(np.abs(np.fft.rfft(read_wav(signal / p))).argmax() + 1.0)]
                     for p in items.audio[has]])
    assert nearest_centroid_accuracy(peak, genre[has]) > 0.6


def test_audio_pulse_rate_predicts_mood(signal):
    items = read_items(signal)
    mood = load_latent(signal).mood.map({m: i for i, m in enumerate(MOODS)}).to_numpy()
    has = (items.audio != "").to_numpy()
    rates = []
    for path in items.audio[has]:
        envelope = np.abs(read_wav(signal / path)).reshape(-1, 160).mean(1)  # 100 Hz, 1 s
        rates.append(np.abs(np.fft.rfft(envelope - envelope.mean()))[:20].argmax())
    rates = np.array(rates)
    means = [rates[mood[has] == m].mean() for m in range(len(MOODS))]
    assert means[0] < means[1] < means[2]


def test_text_words_predict_genre(signal):
    items, genre = read_items(signal), genre_index(signal)
    docs = [set(re.findall(r"[a-z]+", f"{t} {d}".lower()))
            for t, d in zip(items.title, items.description, strict=True)]
    vocabulary = sorted(set().union(*docs))
    words = np.array([[w in doc for w in vocabulary] for doc in docs], dtype=np.float64)
    words = words[:, words.mean(0) < 0.2]  # drop words most items share ("the", "and", ...)
    words /= np.maximum(np.linalg.norm(words, axis=1, keepdims=True), 1e-9)
    assert nearest_centroid_accuracy(words, genre) > 0.5


# --- users' tastes follow the latent attributes ---------------------------------------------------


def interactions_with_latent(root: Path) -> pd.DataFrame:
    interactions = pd.read_csv(root / "interactions.csv", dtype={"user_id": str, "item_id": str})
    return interactions.merge(load_latent(root), on="item_id")


def top_genre_share(interactions: pd.DataFrame) -> float:
    return float(interactions.groupby("user_id").genre.agg(
        lambda g: g.value_counts(normalize=True).iloc[0]).mean())


def test_users_concentrate_on_favourite_genres(signal):
    interactions = interactions_with_latent(signal)
    shuffled = interactions.assign(
        genre=np.random.default_rng(0).permutation(interactions.genre.to_numpy()))
    assert top_genre_share(interactions) > 0.4
    assert top_genre_share(interactions) > top_genre_share(shuffled) + 0.15


def test_ratings_are_higher_in_users_favourite_genre(signal):
    interactions = interactions_with_latent(signal)
    favourite = interactions.groupby("user_id").genre.agg(lambda g: g.value_counts().index[0])
    in_favourite = interactions.genre.to_numpy() == favourite[interactions.user_id].to_numpy()
    ratings = interactions.rating.to_numpy()
    assert ratings[in_favourite].mean() > ratings[~in_favourite].mean() + 0.5


def recall_at_10(interactions: pd.DataFrame, test: np.ndarray, score, candidates) -> float:
    """Mean recall@10 over users of held-out items, ranking ``candidates`` by ``score(train)``."""
    recalls = []
    for _, rows in interactions.assign(test=test).groupby("user_id"):
        held_out = set(rows.item_index[rows.test])
        if not held_out:
            continue
        seen = rows.item_index[~rows.test].to_numpy()
        scores = score(seen).astype(np.float64)
        scores[seen] = -np.inf
        scores[~candidates] = -np.inf
        top = np.argsort(-scores, kind="stable")[:10]
        recalls.append(len(held_out & set(top)) / min(10, len(held_out)))
    return float(np.mean(recalls))


def test_content_beats_random_on_cold_items_and_popularity_is_a_beatable_baseline(signal):
    interactions = interactions_with_latent(signal)
    latent = load_latent(signal)
    interactions["item_index"] = interactions.item_id.str[1:].astype(int)
    n = len(latent)
    cell = (latent.genre + "/" + latent.mood).astype("category").cat.codes.to_numpy()
    tie_break = np.random.default_rng(0).random(n) * 1e-6

    def content(seen: np.ndarray) -> np.ndarray:  # how often the user chose each genre × mood
        return np.bincount(cell[seen], minlength=cell.max() + 1)[cell] + tie_break

    def uniform(seen: np.ndarray) -> np.ndarray:
        return tie_break

    everything = np.ones(n, dtype=bool)
    cold = np.zeros(n, dtype=bool)
    cold[np.random.default_rng(1).permutation(n)[: n // 5]] = True
    cold_test = cold[interactions.item_index.to_numpy()]
    assert recall_at_10(interactions, cold_test, content, cold) > 1.5 * recall_at_10(
        interactions, cold_test, uniform, cold)

    test = np.random.default_rng(2).random(len(interactions)) < 0.2
    counts = np.bincount(interactions.item_index[~test], minlength=n)
    popular = recall_at_10(interactions, test, lambda seen: counts + tie_break, everything)
    blended = recall_at_10(interactions, test, lambda seen: content(seen) * (counts + 1),
                           everything)
    random = recall_at_10(interactions, test, uniform, everything)
    assert popular > 2 * random
    assert blended > 1.3 * popular

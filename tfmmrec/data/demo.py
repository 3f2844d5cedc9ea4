"""Start of the data flow when no dataset is given: generates a synthetic demo dataset folder.

Every item has hidden attributes (a genre and a mood), and its text, image and audio are generated
from them with noise. Users' tastes are defined over the same attributes, so a model can only do
well by reading the content. That makes cold-start recommendation learnable, and popularity is a
real but beatable baseline. Generation is seeded and offline. The folder is written to a
temporary directory and renamed into place, and is reused when ``demo.json`` matches the config.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import logging
import math
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from tfmmrec.config import DemoConfig, load_config
from tfmmrec.errors import DataError
from tfmmrec.files import atomic_path, remove_stale_temps

logger = logging.getLogger(__name__)

# Bump when the generator's output changes, so existing demo folders are rebuilt.
DEMO_FORMAT_VERSION = 1
MANIFEST = "demo.json"
LATENT_FILE = "latent.csv"

GENRES = ("scifi", "romance", "mystery", "nature", "comedy", "history")
MOODS = ("calm", "upbeat", "dark")
OCCUPATIONS = ("engineer", "writer", "lawyer", "farmer", "student", "teacher", "artist", "retired")

IMAGE_SIZE = 64
SAMPLE_RATE = 16000
AUDIO_SECONDS = 1.0
# Pitches 4 semitones apart. The ±2 % jitter stays well below the 26 % spacing.
GENRE_PITCH_HZ = (220.0, 277.2, 349.2, 440.0, 554.4, 698.5)
MOOD_AM_HZ = (1.0, 4.0, 9.0)  # the rate of the loudness pulse ("rhythm")
MOOD_SHAPES = ("circle", "square", "triangle")
GENRE_AGE = (28, 35, 45, 50, 22, 58)  # mean age of users whose favourite genre this is

MISSING_IMAGE = 0.10
MISSING_AUDIO = 0.10
MISSING_DESCRIPTION = 0.05
# With this probability one of an item's modalities says nothing about its genre. Then the other
# modalities have to carry the genre, and fusing them helps.
WEAK_MODALITY = 0.25
# Chance that a genre word in the text comes from another genre (a confusable word).
CONFUSER_WORD = 0.1

GENRE_WORDS = {
    "scifi": ("starship", "galaxy", "robot", "android", "laser", "orbit", "alien", "cyborg",
              "wormhole", "nebula"),
    "romance": ("love", "kiss", "wedding", "heart", "sweetheart", "courtship", "valentine",
                "embrace", "devotion", "darling"),
    "mystery": ("detective", "clue", "murder", "suspect", "alibi", "riddle", "inspector", "secret",
                "witness", "cipher"),
    "nature": ("forest", "river", "wildlife", "meadow", "glacier", "whale", "wolves", "canopy",
               "tides", "volcano"),
    "comedy": ("jokes", "prank", "laughter", "sitcom", "clown", "blunder", "parody", "gags",
               "mishap", "banter"),
    "history": ("empire", "medieval", "dynasty", "revolution", "castle", "ancient", "pharaoh",
                "treaty", "legion", "chronicle"),
}
MOOD_WORDS = {
    "calm": ("gentle", "quiet", "peaceful", "soft", "serene", "slow", "tender", "soothing"),
    "upbeat": ("bright", "joyful", "lively", "energetic", "cheerful", "playful", "sunny", "bouncy"),
    "dark": ("grim", "brooding", "bleak", "haunting", "sinister", "stormy", "bitter", "shadowy"),
}
RANDOM_WORDS = (
    "table", "window", "coffee", "train", "garden", "market", "bridge", "paper", "morning",
    "island", "harbor", "kitchen", "village", "station", "bicycle", "teacher", "sister", "brother",
    "friend", "stranger", "neighbor", "summer", "winter", "autumn", "spring", "mirror", "lantern",
    "music", "dinner", "school", "office", "painting", "hotel", "road", "ticket", "camera",
    "journal", "street", "harvest", "festival", "doctor", "farmer", "captain", "engine", "tower",
    "garage", "library", "balcony", "umbrella", "postcard",
)
TITLE_TEMPLATES = (
    "The {M} {G}",
    "{G} of the {R}",
    "{G} and the {R}",
    "A {M} {R}",
    "{R} {G}",
)
SENTENCE_TEMPLATES = (
    "A {m} story about {g} and {g}, set near a {r}.",
    "When the {g} meets a {r}, everything turns {m} for the {g}.",
    "{M} and {m}, this tale follows a {g} through the {g}.",
    "Follow the {g} as an old {r} leads to a {m} {g}.",
    "Nobody expected the {g} and the {g} to feel so {m}.",
    "It is a {m} film about the {g}, a {r} and one more {g}.",
)


@dataclass
class _Items:
    """The hidden attributes of the catalogue and which modalities each item has."""

    ids: list[str]
    genre: np.ndarray
    mood: np.ndarray
    popularity: np.ndarray
    weak: np.ndarray  # -1, or the index in ("text", "image", "audio") of the uninformative modality
    has_image: np.ndarray
    has_audio: np.ndarray
    has_description: np.ndarray


def build_demo_dataset(root: str | Path,
                       config: DemoConfig | Mapping[str, Any] | None = None) -> Path:
    """Write the demo dataset folder at ``root`` (or reuse it) and return its path.

    ``config``: a ``DemoConfig``, or a mapping of its fields (``{"num_items": 30}``, as
    ``data.demo`` in a YAML file), checked by the config system like any other.
    The same config always gives byte-identical files, so a complete folder built earlier with
    the same config and generator version is returned without rebuilding. ``root`` must be
    missing, empty, or an earlier demo folder. Any other folder raises ``DataError``, so that
    user data is never overwritten.
    """
    if isinstance(config, Mapping):  # the one config system names a wrong field or value
        config = load_config({"data": {"demo": dict(config)}}).data.demo
    config = config or DemoConfig()
    root = Path(root)
    if _is_complete(root, config):
        logger.info("reusing demo dataset at %s", root)
        return root
    _check_replaceable(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temps(root):
            logger.info("removed a partial demo build left by a killed process: %s", stale)
        # Built in a hidden sibling and renamed into place (an old demo there is replaced):
        # a reader never sees a half-written folder.
        with atomic_path(root, directory=True, replace=True) as tmp:
            Path(tmp).mkdir()
            _write_dataset(Path(tmp), config)
    except OSError as exc:
        if not _is_complete(root, config):
            raise DataError(f"cannot write the demo dataset to {root}: "
                            f"{exc.strerror or exc} ({exc.filename or root})") from None
        # a concurrent build of the same config published its (identical) folder first
    logger.info("built demo dataset at %s (%d items, %d users)", root, config.num_items,
                config.num_users)
    return root


def load_latent(root: str | Path) -> pd.DataFrame:
    """The true item attributes (``item_id``, ``genre``, ``mood``, ``popularity``).

    Use this only in tests and benchmarks, for example to check how well embeddings separate
    genres. Models must not read it: it is the answer the content is generated from.
    """
    path = Path(root) / LATENT_FILE
    if not path.is_file():
        raise DataError(
            f"no {LATENT_FILE} in {root}: latent attributes exist only in folders made by "
            "build_demo_dataset; build one with tfmmrec.build_demo_dataset(root)"
        )
    return pd.read_csv(path, dtype={"item_id": str, "genre": str, "mood": str})


# --- reuse ---------------------------------------------------------------------------------------


def _manifest(config: DemoConfig) -> dict:
    return {"version": DEMO_FORMAT_VERSION, "config": dataclasses.asdict(config)}


def _is_complete(root: Path, config: DemoConfig) -> bool:
    """True if ``root`` is a finished build of this config (the manifest is written last)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if {k: manifest.get(k) for k in ("version", "config")} != _manifest(config):
        return False
    files = manifest.get("files", {})
    return all(
        (root / name).is_file() for name in ("items.csv", "interactions.csv", "users.csv",
                                             LATENT_FILE)
    ) and all(_count_files(root / sub) == files.get(sub) for sub in ("images", "audio"))


def _count_files(folder: Path) -> int:
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def _check_replaceable(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"demo dataset root {root} is a file; pass a directory path")
    if root.is_dir() and any(root.iterdir()) and not (root / MANIFEST).is_file():
        raise DataError(
            f"demo dataset root {root} is a non-empty folder that is not a tfmmrec demo "
            f"(no {MANIFEST}); refusing to overwrite it — pass a new or empty directory"
        )


# --- generation ----------------------------------------------------------------------------------


def _write_dataset(folder: Path, config: DemoConfig) -> None:
    # A separate stream for each part, so a change to one part leaves the others unchanged.
    seeds = np.random.SeedSequence(config.seed).spawn(5)
    items_rng, text_rng, image_rng, audio_rng, user_rng = (np.random.default_rng(s) for s in seeds)
    items = _sample_items(items_rng, config.num_items)
    (folder / "images").mkdir()
    (folder / "audio").mkdir()
    table = _items_table(items, text_rng)
    table["image"] = _write_images(folder, items, image_rng)
    table["audio"] = _write_audio(folder, items, audio_rng)
    users, interactions = _sample_users(user_rng, items, config)
    _write_csv(table, folder / "items.csv")
    _write_csv(interactions, folder / "interactions.csv")
    _write_csv(users, folder / "users.csv")
    latent = pd.DataFrame({
        "item_id": items.ids,
        "genre": [GENRES[g] for g in items.genre],
        "mood": [MOODS[m] for m in items.mood],
        "popularity": np.round(items.popularity, 8),
    })
    _write_csv(latent, folder / LATENT_FILE)
    manifest = _manifest(config) | {
        "files": {"images": int(items.has_image.sum()), "audio": int(items.has_audio.sum())},
        "note": f"{LATENT_FILE} holds the generator's ground truth; models must not read it.",
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, lineterminator="\n")


def _sample_items(rng: np.random.Generator, n: int) -> _Items:
    cells = rng.permutation(np.arange(n) % (len(GENRES) * len(MOODS)))  # balanced genre × mood
    ranks = rng.permutation(n)
    # A Zipf-like long tail, flat enough that taste (and so content) decides more than popularity.
    popularity = 1.0 / (ranks + 5.0) ** 0.8
    weak = np.where(rng.random(n) < WEAK_MODALITY, rng.integers(0, 3, n), -1)
    has_image = rng.random(n) >= MISSING_IMAGE
    has_audio = rng.random(n) >= MISSING_AUDIO
    has_description = rng.random(n) >= MISSING_DESCRIPTION
    # Every item keeps at least one of description, image and audio. The title is always there.
    none = ~(has_image | has_audio | has_description)
    restore = rng.integers(0, 2, n)
    has_image |= none & (restore == 0)
    has_audio |= none & (restore == 1)
    width = max(4, len(str(n - 1)))
    return _Items(
        ids=[f"i{i:0{width}d}" for i in range(n)],
        genre=cells // len(MOODS),
        mood=cells % len(MOODS),
        popularity=popularity / popularity.sum(),
        weak=weak,
        has_image=has_image,
        has_audio=has_audio,
        has_description=has_description,
    )


# --- text: genre words and mood words among filler, random and confusable words -----------------


def _items_table(items: _Items, rng: np.random.Generator) -> pd.DataFrame:
    titles, descriptions = [], []
    for i in range(len(items.ids)):
        genre = None if items.weak[i] == 0 else int(items.genre[i])  # None: text is the weak one
        mood = int(items.mood[i])
        titles.append(_fill(rng.choice(TITLE_TEMPLATES), genre, mood, rng))
        sentences = 1 + int(rng.random() < 0.5)
        chosen = rng.choice(len(SENTENCE_TEMPLATES), size=sentences, replace=False)
        text = " ".join(_fill(SENTENCE_TEMPLATES[k], genre, mood, rng) for k in chosen)
        descriptions.append(text if items.has_description[i] else "")
    return pd.DataFrame({"item_id": items.ids, "title": titles, "description": descriptions})


def _fill(template: str, genre: int | None, mood: int, rng: np.random.Generator) -> str:
    """Fill slots: {g} genre word, {m} mood word, {r} random word; upper-case slots capitalise."""
    out = template
    for slot in ("{g}", "{G}", "{m}", "{M}", "{r}", "{R}"):
        while slot in out:
            word = _word(slot[1].lower(), genre, mood, rng)
            out = out.replace(slot, word.capitalize() if slot[1].isupper() else word, 1)
    return out


def _word(kind: str, genre: int | None, mood: int, rng: np.random.Generator) -> str:
    if kind == "m":
        return str(rng.choice(MOOD_WORDS[MOODS[mood]]))
    if kind == "g" and genre is not None:
        if rng.random() < CONFUSER_WORD:
            genre = int(rng.integers(len(GENRES)))
        return str(rng.choice(GENRE_WORDS[GENRES[genre]]))
    return str(rng.choice(RANDOM_WORDS))


# --- image: background hue from genre, shape from mood, with jitter and pixel noise --------------


def _write_images(folder: Path, items: _Items, rng: np.random.Generator) -> list[str]:
    paths = []
    for i, item_id in enumerate(items.ids):
        image = _render_image(int(items.genre[i]), int(items.mood[i]), items.weak[i] == 1, rng)
        if not items.has_image[i]:
            paths.append("")
            continue
        relative = f"images/{item_id}.png"
        Image.fromarray(image).save(folder / relative, format="PNG")
        paths.append(relative)
    return paths


def _render_image(genre: int, mood: int, weak: bool, rng: np.random.Generator) -> np.ndarray:
    """A 64×64 RGB picture. Images that will not be written are drawn anyway to keep the
    random stream (and so every other image) independent of which images are missing."""
    hue = rng.random() if weak else (genre / len(GENRES) + rng.normal(0, 0.025)) % 1.0
    background = _rgb(hue, rng.uniform(0.45, 0.85), rng.uniform(0.6, 0.95))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.2:  # distractor stripes, unrelated to any attribute
        for x in range(int(rng.integers(0, 8)), IMAGE_SIZE, 12):
            draw.line([(x, 0), (x, IMAGE_SIZE)], fill=_rgb(rng.random(), 0.3, 0.8), width=2)
    fill = _rgb(rng.random(), rng.uniform(0, 0.3), 0.15 if rng.random() < 0.5 else 0.97)
    _draw_shape(draw, MOOD_SHAPES[mood], fill, rng)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, fill: tuple[int, int, int],
                rng: np.random.Generator) -> None:
    radius = float(rng.uniform(10, 18))
    cx, cy = rng.uniform(radius + 2, IMAGE_SIZE - radius - 2, size=2)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        corners = [
            (cx + radius * math.cos(angle + k * 2 * math.pi / 3),
             cy + radius * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]
        draw.polygon(corners, fill=fill)


# --- audio: pitch from genre, loudness-pulse rate from mood, with noise ---------------------------


def _write_audio(folder: Path, items: _Items, rng: np.random.Generator) -> list[str]:
    paths = []
    for i, item_id in enumerate(items.ids):
        clip = _synthesize(int(items.genre[i]), int(items.mood[i]), items.weak[i] == 2, rng)
        if not items.has_audio[i]:
            paths.append("")
            continue
        relative = f"audio/{item_id}.wav"
        _write_wav(folder / relative, clip)
        paths.append(relative)
    return paths


def _synthesize(genre: int, mood: int, weak: bool, rng: np.random.Generator) -> np.ndarray:
    """One second of a tone pulsing in loudness, with harmonics and noise, in [-1, 1]."""
    t = np.arange(int(SAMPLE_RATE * AUDIO_SECONDS)) / SAMPLE_RATE
    pitch = rng.uniform(200, 800) if weak else GENRE_PITCH_HZ[genre] * rng.normal(1, 0.02)
    phase = rng.uniform(0, 2 * np.pi)
    tone = np.sin(2 * np.pi * pitch * t + phase)
    tone += rng.uniform(0.1, 0.4) * np.sin(4 * np.pi * pitch * t)
    tone += rng.uniform(0.0, 0.2) * np.sin(6 * np.pi * pitch * t)
    rate = MOOD_AM_HZ[mood] * rng.uniform(0.9, 1.1)
    depth = rng.uniform(0.6, 0.95)
    envelope = 1 - depth * 0.5 * (1 + np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    fade = np.minimum(1, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms fades avoid clicks
    clip = 0.45 * tone * envelope * fade + rng.normal(0, rng.uniform(0.02, 0.08), t.size)
    return np.clip(clip, -1, 1)


def _write_wav(path: Path, clip: np.ndarray) -> None:
    """16-bit PCM mono, which every decoder reads, including ``tf.audio.decode_wav``."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.rint(clip * 32767).astype("<i2").tobytes())


# --- users and interactions: taste over genre × mood, times popularity ---------------------------


def _sample_users(rng: np.random.Generator, items: _Items,
                  config: DemoConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    width = max(3, len(str(config.num_users - 1)))
    user_ids = [f"u{u:0{width}d}" for u in range(config.num_users)]
    genre_taste = rng.dirichlet(np.full(len(GENRES), 0.3), config.num_users)
    mood_taste = rng.dirichlet(np.full(len(MOODS), 1.0), config.num_users)
    users = _user_features(rng, user_ids, genre_taste)
    k = min(config.interactions_per_user, len(items.ids))
    start = 1_577_836_800 + rng.integers(0, 180 * 86_400, config.num_users)  # from 2020-01-01
    item_index, ratings, times = [], [], []
    for u in range(config.num_users):
        # How well each item fits the user's taste, scaled to [0, 1].
        match = genre_taste[u][items.genre] * mood_taste[u][items.mood]
        match = match / match.max()
        chosen = _sample_without_replacement(rng, (match + 0.02) * items.popularity, k)
        order = rng.permutation(chosen)  # the time order is random; the taste stays the same
        item_index.append(order)
        times.append(start[u] + np.cumsum(1 + rng.exponential(2 * 86_400, k).astype(np.int64)))
        ratings.append(np.clip(np.rint(1.3 + 3.7 * match[order] + rng.normal(0, 0.6, k)), 1, 5))
    interactions = pd.DataFrame({
        "user_id": np.repeat(user_ids, k),
        "item_id": np.asarray(items.ids)[np.concatenate(item_index)],
        "rating": np.concatenate(ratings).astype(int),
        "timestamp": np.concatenate(times),
    })
    return users, interactions


def _sample_without_replacement(rng: np.random.Generator, weights: np.ndarray,
                                k: int) -> np.ndarray:
    """Sample k items one after another, each with probability ∝ weight, via Gumbel-top-k."""
    keys = np.log(weights) + rng.gumbel(size=weights.size)
    return np.argsort(-keys, kind="stable")[:k]


def _user_features(rng: np.random.Generator, user_ids: list[str],
                   genre_taste: np.ndarray) -> pd.DataFrame:
    """Age and occupation depend loosely on the favourite genre, so they tell cold users apart."""
    favourite = genre_taste.argmax(axis=1)
    n = len(user_ids)
    age = np.clip(np.rint(np.asarray(GENRE_AGE)[favourite] + rng.normal(0, 8, n)), 16, 80)
    typical = rng.random(n) < 0.6
    occupation = np.where(typical, favourite, rng.integers(0, len(OCCUPATIONS), n))
    return pd.DataFrame({
        "user_id": user_ids,
        "age": age.astype(int),
        "occupation": [OCCUPATIONS[o] for o in occupation],
    })

"""Helpers that write small dataset folders (tables as text, media as tiny real files)."""

from __future__ import annotations

import textwrap
import wave
from pathlib import Path

import numpy as np
from PIL import Image

ITEMS = """\
item_id,title,description,image,audio
i1,Starship Love,A calm story about a robot,images/i1.png,audio/i1.wav
i2,Forest Tides,,images/i2.png,audio/i2.wav
i3,The Riddle,A dark mystery,,audio/i3.wav
"""
INTERACTIONS = """\
user_id,item_id,rating,timestamp
u1,i1,5,100
u1,i2,3,200
u2,i3,4,150
u2,i1,2,300
"""
USERS = """\
user_id,age,occupation
u1,30,engineer
u2,45,writer
"""


def write_png(path: Path, color=(200, 40, 40), size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def write_wav(path: Path, freq: float = 440.0, seconds: float = 0.25, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(samples.tobytes())
    return path


def make_folder(root: Path, items: str | None = ITEMS, interactions: str | None = INTERACTIONS,
                users: str | None = USERS, items_name: str = "items.csv",
                media: bool = True) -> Path:
    """A dataset folder; ``None`` leaves a table out. Media files named in ITEMS are created."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in ((items_name, items), ("interactions.csv", interactions),
                       ("users.csv", users)):
        if text is not None:
            (root / name).write_text(textwrap.dedent(text))
    if media:
        for i, item in enumerate(("i1", "i2")):
            write_png(root / "images" / f"{item}.png", color=(60 * i, 100, 200))
        for i, item in enumerate(("i1", "i2", "i3")):
            write_wav(root / "audio" / f"{item}.wav", freq=300.0 + 200 * i)
    return root


# Seven items for the encoder-cache counts: two own images, three sharing one file, one file
# that does not decode, one item without an image.
SUMMARY_ITEMS = """\
item_id,title,image
i1,One,images/i1.png
i2,Two,images/i2.png
i3,Three,images/shared.png
i4,Four,images/shared.png
i5,Five,images/shared.png
i6,Six,images/broken.png
i7,Seven,
"""


def summary_folder(root: Path) -> Path:
    """A dataset folder of ``SUMMARY_ITEMS`` (one user per item), its images written."""
    interactions = "user_id,item_id\n" + "".join(f"u1,i{i}\n" for i in range(1, 8))
    root = make_folder(root, items=SUMMARY_ITEMS, interactions=interactions, users=None,
                       media=False)
    for name, color in (("i1", (10, 20, 30)), ("i2", (200, 20, 30)), ("shared", (9, 99, 9))):
        write_png(root / "images" / f"{name}.png", color=color)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG but not really")
    return root

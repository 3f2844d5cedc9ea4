"""Modalities: one spec per kind of item content (text, image, audio, facets), in one registry.

Data, towers, cache, TFRecords and export ask the registry instead of testing modality names::

    from tfmmrec import modalities

    for spec in modalities.specs():          # text, image, audio (+ anything registered)
        spec.content_key(value)              # the feature cache's key
        spec.load(value, settings)           # file → decoded array
        spec.decode_request(request, ...)    # serving bytes → encoder input, in-graph

Adding a modality is one module defining a ``ModalitySpec`` (usually a ``FileModality``)
plus ``modalities.register(MySpec())`` (or, for the ``tfmmrec`` command, an entry point in
the ``tfmmrec.modalities`` group); see the README's "Modalities" section. Worker
processes (``tfmmrec prepare``'s pool, Beam workers) start with the built-in specs and import
the others by class (``references``/``require``), so a spec class lives at the top level of an
importable module.
"""

from tfmmrec.modalities.audio import AudioModality
from tfmmrec.modalities.base import FileModality, ModalitySpec, content_hash
from tfmmrec.modalities.image import ImageModality
from tfmmrec.modalities.registry import (
    check_importable,
    default_settings,
    get,
    limit_settings,
    load_entry_points,
    names,
    reference,
    references,
    register,
    require,
    resolve_settings,
    settings_from_config,
    specs,
    unregister,
)
from tfmmrec.modalities.text import FacetsModality, TextModality

# The built-in modalities, in the order every consumer iterates them, then installed plugins.
for _spec in (TextModality(), ImageModality(), AudioModality(), FacetsModality()):
    if _spec.name not in names():
        register(_spec)
load_entry_points()

__all__ = [
    "AudioModality",
    "FacetsModality",
    "FileModality",
    "ImageModality",
    "ModalitySpec",
    "TextModality",
    "check_importable",
    "content_hash",
    "default_settings",
    "get",
    "limit_settings",
    "load_entry_points",
    "names",
    "reference",
    "references",
    "register",
    "require",
    "resolve_settings",
    "settings_from_config",
    "specs",
    "unregister",
]

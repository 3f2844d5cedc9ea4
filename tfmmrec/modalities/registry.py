"""Modalities: the registry — the one list of modality specs every layer iterates over.

Order is registration order (text, image, audio, then anything registered later): it fixes the
order of ``Catalog.modalities``, of TFRecord fields and of the preprocessing settings recorded
in plans and manifests.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tfmmrec import config as _config
from tfmmrec.data import media
from tfmmrec.errors import ConfigError
from tfmmrec.modalities.base import OFFLINE_LIMITS, ModalitySpec, decode_limits
from tfmmrec.references import class_reference, import_or_refuse, only_this_process

if TYPE_CHECKING:
    from tfmmrec.config import Config

logger = logging.getLogger(__name__)

_SPECS: dict[str, ModalitySpec] = {}


def register(spec: ModalitySpec) -> ModalitySpec:
    """Add ``spec`` to the registry (a name registered twice is a mistake, not an update), and
    its ``tower_config_class`` to ``Config`` as the section ``<name>:``. A name ending in
    ``_mask`` is refused: content batches key modality m's presence mask ``m + "_mask"``."""
    if not isinstance(spec, ModalitySpec) or not isinstance(spec.name, str) or not spec.name:
        raise TypeError(f"register() takes a ModalitySpec instance with a name, got {spec!r}")
    if spec.name.endswith("_mask"):
        raise ValueError(f"modality name {spec.name!r} ends in '_mask': the item content table "
                         "keys each modality's presence mask '<name>_mask', so a modality "
                         "named so would take (or be taken for) another one's mask ('text_mask' "
                         "is text's); choose another name")
    if spec.name in _SPECS:
        raise ValueError(f"modality {spec.name!r} is already registered "
                         f"({type(_SPECS[spec.name]).__name__})")
    clash = set(spec.settings_fields) & {OFFLINE_LIMITS, *(k for s in _SPECS.values()
                                                           for k in s.settings_fields)}
    if clash:
        raise ValueError(f"modality {spec.name!r}: setting name(s) {sorted(clash)} are already "
                         "used by another modality")
    _config.register_tower_section(spec.name, spec.tower_config_class)
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a registered modality and its config section (tests that register a modality of
    their own)."""
    if _SPECS.pop(name, None) is not None:
        _config.unregister_tower_section(name)


def get(name: str) -> ModalitySpec:
    """The spec registered as ``name``."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown modality {name!r}: registered modalities are "
                          f"{', '.join(_SPECS)}") from None


def names() -> tuple[str, ...]:
    """Every registered modality's name, in registration order."""
    return tuple(_SPECS)


def specs() -> Iterator[ModalitySpec]:
    """Every registered spec, in registration order."""
    return iter(tuple(_SPECS.values()))


def reference(spec: ModalitySpec) -> str:
    """``"module:QualName"`` of ``spec``'s class: how another process (a ``prepare`` worker, a
    Beam worker) imports and registers the same modality (:func:`require`)."""
    return class_reference(type(spec))


def references() -> list[str]:
    """:func:`reference` of every registered spec, in registration order."""
    return [reference(spec) for spec in specs()]


def check_importable(refs: Sequence[str]) -> None:
    """Refuse, before any worker starts, a spec class that no other process can import: one
    defined inside a function, or in an interactive ``__main__`` (a notebook, ``python -c``)."""
    for ref in refs:
        if where := only_this_process(ref):
            raise ConfigError(f"modality spec {ref} cannot be imported by a worker process "
                              f"({where}): define it at the top level of an importable module "
                              "(or a script file), or run with one worker (--workers 1)")


def require(refs: Sequence[str]) -> None:
    """Register in this process every spec of ``refs`` (:func:`references` of another one)
    that is not registered yet, importing its class and calling it with no arguments: worker
    processes start with the built-in modalities (and installed plugins) only. A
    ``ConfigError`` names a spec that cannot be imported here."""
    here = set(references())
    for ref in refs:
        if ref in here:  # registered in this process (the planning one, or a worker again)
            continue
        cls: Any = import_or_refuse(
            ref, f"modality spec {ref}", f"process {os.getpid()}",
            "define a registered modality at the top level of a module the workers can import "
            "(on their PYTHONPATH), or run with one worker (--workers 1)")
        registered = _SPECS.get(getattr(cls, "name", None))
        if registered is None:
            register(cls())
        elif not isinstance(registered, cls):
            raise ConfigError(f"modality {cls.name!r} is {reference(registered)} in process "
                              f"{os.getpid()}, not {ref} (where the job was planned)")


ENTRY_POINT_GROUP = "tfmmrec.modalities"


def load_entry_points() -> list[str]:
    """Register the specs installed packages declare in the ``tfmmrec.modalities`` entry-point
    group (``vector = "my_package.vector:VectorModality"`` in their ``pyproject.toml``), so
    the ``tfmmrec`` command, its ``--<name>`` query options and every worker process know them
    without any code of the user's running first. Called when ``tfmmrec.modalities`` is first
    imported; a plugin that cannot be loaded is skipped with a warning naming it (the rest of
    tfmmrec keeps working). Returns the references registered."""
    from importlib.metadata import entry_points

    loaded = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            require([entry.value])
        except (ConfigError, ValueError, TypeError) as exc:
            logger.warning("modality plugin %r (%s) not loaded: %s", entry.name, entry.value,
                           exc)
        else:
            loaded.append(entry.value)
    return loaded


def default_settings() -> dict[str, Any]:
    """Every modality's preprocessing settings at their (config dataclass) defaults."""
    return {key: value for spec in specs() for key, value in spec.default_settings().items()}


def settings_from_config(config: Config) -> dict[str, Any]:
    """Every modality's preprocessing settings as ``config`` sets them (``image_size``,
    ``sample_rate``, ``max_seconds``, ...), with the offline decoders' limits when
    ``export.limits`` changes them (:func:`limit_settings`): the one dict the cache,
    TFRecords, ``tfmmrec encode``, ``validate`` and the export read."""
    settings = {key: value for spec in specs() for key, value in spec.settings(config).items()}
    return {**settings, **limit_settings(config.export.limits)}


def limit_settings(limits: _config.ServingLimitsConfig | Mapping[str, Any] | None
                   ) -> dict[str, Any]:
    """``{OFFLINE_LIMITS: ...}``: the offline decoders' limits that go with the serving
    ``limits`` (``export.limits``, or the dict an export records), as JSON for plans and jobs;
    ``{}`` when they are the defaults, so a default run's plans, manifests and exports stay
    as they were, while an override is recorded (records and features prepared under other
    limits are then redone)."""
    if isinstance(limits, Mapping):
        known = {f.name for f in dataclasses.fields(_config.ServingLimitsConfig)}
        limits = _config.ServingLimitsConfig(**{k: v for k, v in limits.items() if k in known})
    offline = media.offline_limits(limits)
    return {} if offline == media.DEFAULT_LIMITS else {OFFLINE_LIMITS: dataclasses.asdict(offline)}


def resolve_settings(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The defaults with ``overrides`` applied; an unknown name is a ``ConfigError`` and each
    modality validates its own values (``validate_settings``)."""
    settings = default_settings()
    unknown = sorted(set(overrides or {}) - set(settings) - {OFFLINE_LIMITS})
    if unknown:
        raise ConfigError(f"unknown preprocessing setting(s) {', '.join(unknown)}: the "
                          f"registered modalities read {', '.join(settings) or 'none'}")
    settings.update(overrides or {})
    decode_limits(settings)  # a malformed limits entry is a ConfigError here, not at a decode
    for spec in specs():
        validate = getattr(spec, "validate_settings", None)
        if validate is not None:
            validate(settings)
    return settings

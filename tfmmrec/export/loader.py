"""Export: load an exported version in-process (registers custom ops first) and query it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmmrec._env import register_custom_ops
from tfmmrec.errors import (
    ExportError,
    ServingError,
    name_viewed_input,
    one_line_error,
    shown,
)
from tfmmrec.export.writer import is_version_name, list_versions, read_metadata
from tfmmrec.modalities.base import check_strings, not_a_string


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """``model_dir`` as a Path, refused when it is a folder where no version will ever appear:
    a version folder itself (an integer-named folder holding a saved_model.pb), the export
    base folder above the model folders, a training run's folder, or a file. Given one, a
    server would wait forever and a catalogue update would find no version. The one check
    ``latest_version`` and ``tfmmrec serve`` share; a missing or empty folder passes (an
    export may still come: the server waits for it)."""
    model_dir = Path(model_dir)
    resolved = model_dir.resolve()  # ".", "x/3/sub/..", a link to a version: the real folder
    parent = resolved.parent
    if is_version_name(resolved.name) and (resolved / "saved_model.pb").is_file():
        raise ExportError(f"{model_dir} is version {resolved.name} of model "
                          f"{parent.name!r}: pass its parent folder {parent}")
    if resolved.exists() and not resolved.is_dir():
        raise ExportError(f"{model_dir} is a file, not a model's folder of versions")
    if list_versions(resolved):
        return model_dir
    models = model_folders(resolved)
    if models:
        raise ExportError(f"{model_dir} holds the folders of model(s) "
                          f"{', '.join(p.name for p in models)}: pass one of them, e.g. "
                          f"{model_dir / models[0].name}")
    if (resolved / "checkpoints").is_dir() or (resolved / "run.json").is_file():
        raise ExportError(f"{model_dir} is a training run's folder, not an export: run "
                          "`tfmmrec export` and pass the model folder it prints "
                          "(<export.base_dir>/<export.model_name>)")
    return model_dir


def model_folders(base_dir: Path) -> list[Path]:
    """The folders of ``base_dir`` that hold versions (an export base folder's models)."""
    try:
        return sorted(p for p in base_dir.iterdir() if p.is_dir() and list_versions(p))
    except OSError:
        return []


def version_of(path: str | os.PathLike) -> Path:
    """The version a ``path`` names: itself when it holds a saved_model.pb, a model folder's
    newest version, else an error saying what ``path`` is (``read_metadata`` names a folder
    that is none of these)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    if list_versions(path):
        return latest_version(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist: pass an export's version folder or model "
                          "folder (<export.base_dir>/<export.model_name>[/<version>])")
    check_model_dir(path)  # a base folder or a training run: named as such
    return path  # read_metadata names it: not a tfmmrec export


def latest_version(model_dir: str | os.PathLike) -> Path:
    """The highest integer version directory (TF Serving's default choice)."""
    model_dir = check_model_dir(model_dir)
    versions = list_versions(model_dir)
    if not versions:
        missing = "" if model_dir.exists() else " (the folder does not exist)"
        raise ExportError(f"no model versions under {model_dir}{missing}")
    return model_dir / str(versions[-1])


class ExportedModel:
    """A loaded version: ``signatures[name](**inputs)`` plus convenience calls."""

    def __init__(self, version_dir: str | os.PathLike):
        """``version_dir``: one version, or a model's folder of versions (its newest, as every
        ``tfmmrec`` command takes a model folder)."""
        self.path = version_of(version_dir)
        self.metadata = read_metadata(self.path)
        register_custom_ops(scann=self.metadata.get("requires_scann_ops", True))
        try:
            self._loaded = tf.saved_model.load(str(self.path))
        except Exception as exc:
            raise ExportError(f"cannot load SavedModel {self.path}: {exc}") from None
        self.signatures = dict(self._loaded.signatures)

    @property
    def default_k(self) -> int:
        """The k of a request without one, as the signatures' default: the export's k, at most
        its max_k and its catalogue size (versions written before the metadata recorded the
        effective values advertise the configured ones)."""
        metadata = self.metadata
        return min(int(metadata["default_k"]), int(metadata["max_k"]),
                   int(metadata.get("num_items", metadata["max_k"])))

    def call(self, signature: str, **inputs) -> dict[str, np.ndarray]:
        """Run one signature. A bad request (an unknown input, a single value where the
        signature takes a batch, a k that is not an int32 integer, or anything the graph's own
        checks refuse) raises ``ServingError`` with one line naming the input and the value,
        as ``tfmmrec serve`` answers it."""
        if signature not in self.signatures:
            raise ExportError(f"{self.path} has no signature {signature!r}; it has "
                              f"{', '.join(sorted(self.signatures))}")
        arguments = self.signatures[signature].structured_input_signature[1]
        _check_request(signature, arguments, inputs)
        # TF Serving applies the SignatureDef defaults; Python's loader does not.
        if "k" in arguments and "k" not in inputs:
            inputs["k"] = np.int32(self.default_k)
        if "exclude_item_ids" in arguments and "exclude_item_ids" not in inputs:
            inputs["exclude_item_ids"] = np.zeros((0, 0), dtype=object).astype(bytes)
        # ``recommend_session``'s optional inputs: its user and a viewed_<modality> per
        # modality the export was made with (read from the signature, not the registry).
        optional = [a for a in arguments if a == "user_id" or a.startswith("viewed_")]
        for name in optional:
            inputs.setdefault(name, np.zeros(0, dtype=object).astype(bytes))
        try:
            outputs = self.signatures[signature](**{k: tf.constant(v)
                                                    for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            message = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
            message = name_viewed_input(one_line_error(message), arguments)
            raise ServingError(f"{signature}: {message}") from None
        return {k: v.numpy() for k, v in outputs.items()}

    def recommend(self, user_ids, k: int | None = None, exclude=None) -> dict[str, np.ndarray]:
        """Top-k for user ids; ``exclude``: per user, item ids never to return."""
        users = _batch(user_ids, "user_ids").astype(str)
        if exclude is not None:  # serving_default has no exclusion input: recommend does
            extra = {} if k is None else {"k": k}
            return self.call("recommend", user_id=users,
                             exclude_item_ids=padded(exclude, "exclude"), **extra)
        if k is None:
            return self.call("serving_default", user_id=users)
        return self.call("recommend", user_id=users, k=k)

    def recommend_session(self, sessions, user_ids=None, k: int | None = None,
                          exclude=None, viewed: dict | None = None) -> dict[str, np.ndarray]:
        """Top-k for sessions (lists of recent item ids, oldest first), optionally of users;
        ``viewed``: ``{modality: one raw value per session, "" / b"" for none}``."""
        inputs = {"session_item_ids": session_rows(sessions)}
        for modality, values in (viewed or {}).items():
            inputs[f"viewed_{modality}"] = np.array(list(values), dtype=object)
        if user_ids is not None:
            inputs["user_id"] = _batch(user_ids, "user_ids").astype(str)
        if k is not None:
            inputs["k"] = k
        if exclude is not None:
            inputs["exclude_item_ids"] = padded(exclude, "exclude")
        return self.call("recommend_session", **inputs)

    def item_embeddings(self, item_ids) -> np.ndarray:
        """The served embeddings of these items (``ExportError`` for an id not served)."""
        ids = _batch(item_ids, "item_ids").astype(str)
        out = self.call("embed_items", item_id=ids)
        if not out["found"].all():
            missing = ", ".join(repr(str(i)) for i in ids[~out["found"]][:5])
            raise ExportError(f"item id(s) not in {self.path}: {missing}")
        return out["embedding"]


INT32_MAX = 2**31 - 1


def _check_request(signature: str, arguments: dict, inputs: dict) -> None:
    """What the graph cannot say in a user's words: unknown inputs, a scalar where a batch
    belongs, and a ``k`` that is not an int32 integer."""
    unknown = sorted(set(inputs) - set(arguments))
    if unknown:
        raise ServingError(f"{signature}: unknown input(s) {', '.join(unknown)}; it takes "
                           f"{', '.join(sorted(arguments))}")
    for name, value in inputs.items():
        if arguments[name].shape.rank and np.ndim(value) == 0:
            raise ServingError(f"{signature}: {name} is a single value "
                               f"({shown(value)}); pass a batch, e.g. a list with one "
                               "entry per query")
        mismatch = shape_mismatch(signature, name, np.shape(value),
                                  arguments[name].shape.as_list()
                                  if arguments[name].shape.rank is not None else None)
        if mismatch:  # the graph would say "In[0] is not a matrix" or a slice index
            raise ServingError(f"{signature}: {mismatch}")
        if arguments[name].dtype == tf.string:
            check_strings(value, f"{signature}: {name}")
    if "k" in inputs:
        inputs["k"] = check_k(inputs["k"], signature)


def shape_mismatch(signature: str, alias: str, shape, expected: list | None) -> str | None:
    """The message for an input whose shape the signature does not take (None: it does;
    ``expected`` None or ``-1``/None entries: any size). The one wording ``ExportedModel`` and
    ``tfmmrec serve`` answer with."""
    if expected is None:
        return None
    expected = [-1 if e is None else int(e) for e in expected]
    shape = [int(s) for s in shape]
    if len(shape) == len(expected) and all(e in (-1, s) for s, e in zip(shape, expected,
                                                                       strict=True)):
        return None
    hint = ""
    if not expected:
        hint = (" (a scalar: over REST send it once in the columnar 'inputs' object, "
                "not in every 'instances' row)")
    return (f"input '{alias}' of signature '{signature}' has shape {shape} but the signature "
            f"expects {expected}{hint}; -1 means any size")


def check_k(k, signature: str) -> np.int32:
    """``k`` as the request's int32, refusing what ``np.int32(k)`` would quietly change or
    crash on: a float (2.5 → 2), a string ("2" → 2), a bool (an int subclass: True → 1) and a
    number outside [1, 2**31 - 1] (an OverflowError). The one k check ``ExportedModel`` and
    ``ServingClient`` share; the graph checks the export's max_k."""
    number = integer_in(k, 1, INT32_MAX)
    if number is None:
        raise ServingError(f"{signature}: k must be an integer from 1 to the export's max_k, "
                           f"got {k!r}")
    return np.int32(number)


def integer_in(value, low: int, high: int) -> int | None:
    """``value`` (a Python or numpy int, or a 0-d array: a TensorProto's) as an int when it
    is one within ``[low, high]``, else None: floats, strings and bools (an int subclass, but
    numpy kind "b") are not integers here."""
    array = np.asarray(value)
    if array.ndim == 0 and array.dtype.kind in "iu" and low <= int(array) <= high:
        return int(array)
    return None


def _batch(values, name: str) -> np.ndarray:
    """``values`` as a 1-d array of strings: a lone id is a batch of one (``"u001"`` is one
    user, not five characters; ``ServingClient`` reads it so too); a non-string id is refused
    (``1`` or ``None`` would otherwise be served as an unknown user)."""
    if isinstance(values, str | bytes):
        values = [values]
    check_ordered(values, name, "ids")
    return np.array(id_texts(values, name), dtype=str)


def id_texts(values, name: str) -> list[str]:
    """Ids as ``str`` (UTF-8 bytes decoded), refusing an entry that is not a string or not
    UTF-8, naming its position: the one id check ``ExportedModel`` and ``ServingClient``
    share (a non-UTF-8 id was a raw UnicodeDecodeError in process and an unknown user over
    the wire)."""
    check_strings(values, name)
    return [_id_text(value, f"{name}[{i}]") for i, value in enumerate(values)]


def check_ordered(values, name: str, what: str) -> None:
    """Refuse what is not a batch in order: a dict (its keys would be sent as ids), a set (in
    no particular order, so results would not line up with it) or a lone value such as ``5``
    or ``None``. The one container check ``ExportedModel`` and ``ServingClient`` share."""
    if isinstance(values, Mapping | AbstractSet) or not isinstance(values, Iterable):
        raise ServingError(f"{name} is {shown(values)} ({type(values).__name__}), not a "
                           f"list of {what}")


def padded(lists, name: str = "item id lists") -> np.ndarray:
    """Ragged lists of ids → a ``[B, max_len]`` array of ``str`` padded with "" (the request
    form of ``exclude_item_ids`` and ``session_item_ids``); ``dtype=object``, as numpy's
    fixed-width strings drop trailing NULs (``"i0233\\x00"`` would exclude ``i0233``).

    Anything but a list of lists of strings (UTF-8 bytes are decoded) is refused with a
    ``ServingError`` naming ``name`` and the position: a string's characters would be sent
    as ids (``"i0116"`` as five ids), a dict's keys too, and ``None``, numbers or bytes that
    are not UTF-8 would fail in numpy or TensorFlow with a raw Python error."""
    if isinstance(lists, str | bytes):
        raise ServingError(f"{name} is a single string ({lists!r}); pass one list of item ids "
                           f"per row, e.g. [[{lists!r}]]")
    check_ordered(lists, name, "item id lists")
    rows = [_id_row(row, f"{name}[{r}]") for r, row in enumerate(lists)]
    width = max((len(row) for row in rows), default=0)
    if not width:
        return np.zeros((len(rows), 0), dtype=str)
    out = np.full((len(rows), width), "", dtype=object)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def _id_row(row, name: str) -> list[str]:
    """One row of ``padded``: its ids as ``str``."""
    if isinstance(row, str | bytes):
        raise ServingError(f"{name} is a string ({row!r}), not a list of item ids; pass one "
                           f"list per row, e.g. [[{row!r}]]")
    check_ordered(row, name, "item ids")
    return [_id_text(item, f"{name}[{c}]") for c, item in enumerate(row)]


def _id_text(item, where: str) -> str:
    if isinstance(item, str):
        return str(item)  # np.str_ too
    if not isinstance(item, bytes):
        raise not_a_string(where, item)
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise ServingError(f"{where} is {item!r} (bytes), not UTF-8 text") from None


def session_rows(sessions) -> np.ndarray:
    """``recommend_session``'s sessions as ``padded`` rows, refused when there are none (the
    graph would only see a shape): the one check ``ExportedModel`` and ``ServingClient``
    share, so gRPC and REST fail alike."""
    rows = padded(sessions, "sessions")
    if not len(rows):
        raise ServingError("recommend_session: sessions is an empty batch (give one list of "
                           "recent item ids per session)")
    return rows

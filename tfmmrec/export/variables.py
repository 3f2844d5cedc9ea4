"""Export: a version's variables by object path, read from its checkpoint and rewritten.

A SavedModel's ``variables/`` is a TF checkpoint: each variable's value under a key, plus the
object graph (``_CHECKPOINTABLE_OBJECT_GRAPH``) that names, for every object reachable from the
saved module, its children and its variables' keys. A catalogue update whose graph is unchanged
(``RetrievalServingModule.graph_constants``) writes the next version as the previous one's
``saved_model.pb`` and assets plus a new checkpoint: every key the previous checkpoint had, the
catalogue's (everything outside ``towers``) holding the new module's values, the towers' as they
were (``writer.write_updated_version``). Nothing is traced or loaded as a function.

Every version's checkpoint has two data shards (:func:`split_checkpoint`, :meth:`write`): the
model's tensors (the towers and the object graph) in ``variables.data-00000-of-00002`` and the
catalogue's in ``-00001-of-00002``, plus ``assets.extra/model_variables.index``, the index of the
model shard alone. An update hard-links the previous model shard (versions are immutable) and
writes only the catalogue shard, so the towers' tensors — a million training ids, keys and rows
at 1M items — are neither read nor written; TF's ``MergeV2Checkpoints`` joins the two into the
version's ``variables.index``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# The model shard's own index (a one-shard checkpoint whose data file is the version's shard 0).
MODEL_INDEX = ("assets.extra", "model_variables.index")
MODEL_SHARD = "variables.data-00000-of-00002"
# Root children that are the trained model (never rewritten by a catalogue update).
MODEL_CHILDREN = frozenset({"towers"})

Path_ = tuple[str, ...]


def checkpoint_prefix(version_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(version_dir), "variables", "variables")


class VersionVariables:
    """The checkpoint of one exported version: ``read(path)`` a variable by its attribute path
    from the saved module (``("item_ids",)``, ``("index", "centroids")``), and ``keys`` of the
    catalogue (every variable outside :data:`MODEL_CHILDREN`)."""

    def __init__(self, version_dir: str | os.PathLike):
        self.version_dir = Path(version_dir)
        self.reader = tf.train.load_checkpoint(checkpoint_prefix(version_dir))
        self.dtypes = self.reader.get_variable_to_dtype_map()
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
            self.reader.get_tensor(OBJECT_GRAPH_KEY))
        self.paths = _variable_paths(graph)
        self.catalog_keys = sorted({key for path, key in self.paths.items()
                                    if path[0] not in MODEL_CHILDREN})

    def has(self, path: Path_) -> bool:
        return tuple(path) in self.paths

    def read(self, path: Path_) -> np.ndarray:
        return self.reader.get_tensor(self.paths[tuple(path)])

    def read_tensor(self, path: Path_) -> tf.Tensor:
        """A variable's value as a ``tf.Tensor`` read by TF's restore op: no numpy copy (at 1M
        items a numpy table then converted to a tensor cost a second 128 MB buffer)."""
        key = self.paths[tuple(path)]
        return _restore(checkpoint_prefix(self.version_dir), [key], [self.dtypes[key]])[0]

    def read_under(self, prefix: Path_) -> dict[str, np.ndarray]:
        """Every variable below ``prefix``, keyed by its path relative to it (``"a/b"``)."""
        prefix = tuple(prefix)
        return {"/".join(path[len(prefix):]): self.reader.get_tensor(key)
                for path, key in self.paths.items() if path[:len(prefix)] == prefix}

    def catalog_values(self, root: tf.Module) -> dict[str, tf.Variable] | None:
        """``{key: variable of root}`` for every catalogue key, found by the key's path in
        ``root``; ``None`` when ``root`` is not structured like the saved module (a path that
        does not resolve, a variable of another dtype, or catalogue variables the previous
        checkpoint has no key for)."""
        paths: dict[str, list[Path_]] = {}
        for path, key in self.paths.items():
            if path[0] not in MODEL_CHILDREN:
                paths.setdefault(key, []).append(path)
        found: dict[str, tf.Variable] = {}
        for key, candidates in paths.items():
            # A key may have several paths, some only in SavedModel serialisation (a Keras
            # layer's `variables` list): one that resolves to the variable is enough.
            resolved = {id(v): v for v in (_resolve(root, path) for path in candidates)
                        if isinstance(v, tf.Variable)}
            if len(resolved) != 1:
                return None
            variable = next(iter(resolved.values()))
            if variable.dtype != self.dtypes[key]:
                return None
            found[key] = variable
        ours = _variables([child for name, child in _children(root).items()
                           if name not in MODEL_CHILDREN])
        if ours != {id(v) for v in found.values()}:
            return None
        return found

    @property
    def model_keys(self) -> list[str]:
        """Every key that is not the catalogue's (the towers' variables, the object graph)."""
        catalog = set(self.catalog_keys)
        return sorted(key for key in self.dtypes if key not in catalog)

    def write(self, version_dir: str | os.PathLike, replaced: dict[str, tf.Variable]) -> None:
        """A checkpoint under ``version_dir/variables`` with every key of this one: the
        ``replaced`` keys (the catalogue's) holding those variables' values, the others (and
        the object graph) as they were — the previous model shard hard-linked when this version
        has one (else read and written), only the catalogue shard written."""
        version_dir = Path(version_dir)
        (version_dir / "variables").mkdir(parents=True, exist_ok=True)
        model = _part_prefix(version_dir, "model")
        index = self.version_dir.joinpath(*MODEL_INDEX)
        shard = self.version_dir / "variables" / MODEL_SHARD
        if index.is_file() and shard.is_file():
            link_or_copy(shard, f"{model}.data-00000-of-00001")
            shutil.copyfile(index, f"{model}.index")
        else:  # an export from before the split: the model's tensors are read once more
            keys = self.model_keys
            _save(model, keys, _restore(checkpoint_prefix(self.version_dir), keys,
                                        [self.dtypes[k] for k in keys]))
        keys = self.catalog_keys
        values = [replaced[key].read_value() if key in replaced else self.reader.get_tensor(key)
                  for key in keys]
        _save(_part_prefix(version_dir, "catalog"), keys, values)
        _merge(version_dir, model)


def split_checkpoint(version_dir: str | os.PathLike) -> None:
    """Rewrite a freshly saved version's one-shard checkpoint as the two shards updates
    expect (model, catalogue) and record the model shard's index (:data:`MODEL_INDEX`). The
    tensors are read through TF's restore op, so it works on any path TF can write."""
    version_dir = os.fspath(version_dir)
    variables = VersionVariables(version_dir)
    prefix = checkpoint_prefix(version_dir)
    keys = sorted(variables.dtypes)
    values = dict(zip(keys, _restore(prefix, keys, [variables.dtypes[k] for k in keys]),
                      strict=True))
    for name in tf.io.gfile.glob(f"{prefix}.*"):
        tf.io.gfile.remove(name)
    model = _part_prefix(version_dir, "model")
    _save(model, variables.model_keys, [values[k] for k in variables.model_keys])
    _save(_part_prefix(version_dir, "catalog"), variables.catalog_keys,
          [values[k] for k in variables.catalog_keys])
    _merge(version_dir, model)


def _part_prefix(version_dir, name: str) -> str:
    return os.path.join(os.fspath(version_dir), "variables", f".{name}-part")


def _merge(version_dir, model: str) -> None:
    """``variables/variables.*`` from the model part (shard 0) and the catalogue part (shard
    1); the model part's index is kept as :data:`MODEL_INDEX` (the merge deletes the parts'
    indexes and renames their data files)."""
    extra = os.path.join(os.fspath(version_dir), *MODEL_INDEX)
    tf.io.gfile.makedirs(os.path.dirname(extra))
    tf.io.gfile.copy(f"{model}.index", extra, overwrite=True)
    tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=[model, _part_prefix(version_dir, "catalog")],
        destination_prefix=checkpoint_prefix(version_dir), delete_old_dirs=False)


def _restore(prefix: str, keys: list[str], dtypes: list) -> list[tf.Tensor]:
    return tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=keys,
                                shape_and_slices=[""] * len(keys), dtypes=dtypes)


def _save(prefix: str, keys: list[str], values: list) -> None:
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=keys, shape_and_slices=[""] * len(keys),
                      tensors=values)


def link_or_copy(source, destination) -> None:
    """A hard link (versions are immutable, so the previous version's file can be shared),
    or a copy where links are not possible."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _variable_paths(graph) -> dict[Path_, str]:
    """``{attribute path from the root: checkpoint key}`` of every saved variable value. Each
    object is expanded once (breadth first, as TF names keys); every edge from an expanded
    object is a path, so a variable held twice (``item_table`` and ``index/embeddings``) has
    both."""
    paths: dict[Path_, str] = {}
    first: dict[int, Path_] = {0: ()}
    queue = [0]
    while queue:
        node_id = queue.pop(0)
        prefix = first[node_id]
        for child in graph.nodes[node_id].children:
            path = (*prefix, child.local_name)
            for attribute in graph.nodes[child.node_id].attributes:
                if attribute.name == "VARIABLE_VALUE":
                    paths[path] = attribute.checkpoint_key
            if child.node_id not in first:
                first[child.node_id] = path
                queue.append(child.node_id)
    return paths


def _children(obj) -> dict:
    try:
        return dict(obj._trackable_children())  # TF's object-graph walk
    except (AttributeError, TypeError):
        return {}


def _resolve(root, path: Path_):
    obj = root
    for name in path:
        obj = _children(obj).get(name)
        if obj is None:
            return None
    return obj


def _variables(objects: list) -> set[int]:
    """Ids of every variable reachable from ``objects`` through the object graph."""
    seen: set[int] = set()
    found: set[int] = set()
    while objects:
        obj = objects.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, tf.Variable):
            found.add(id(obj))
        else:
            objects.extend(_children(obj).values())
    return found

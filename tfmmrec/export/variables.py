"""Export: a version's variables by object path, read from its checkpoint and rewritten.

A SavedModel's ``variables/`` is a TF checkpoint: each variable's value under a key, plus the
object graph (``_CHECKPOINTABLE_OBJECT_GRAPH``) that names, for every object reachable from the
saved module, its children and its variables' keys. A catalogue update whose graph is unchanged
(``RetrievalServingModule.graph_constants``) writes the next version as the previous one's
``saved_model.pb`` and assets plus a new checkpoint: every key the previous checkpoint had, the
catalogue's (everything outside ``towers``) holding the new module's values, the towers' copied
as they were (``writer.write_updated_version``). Nothing is traced or loaded as a function.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
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

    def write(self, version_dir: str | os.PathLike, replaced: dict[str, tf.Variable]) -> None:
        """A checkpoint under ``version_dir/variables`` with every key of this one: the
        ``replaced`` keys holding those variables' values, the others (and the object graph)
        copied."""
        names = sorted(self.dtypes)
        tensors = [replaced[name].read_value() if name in replaced
                   else self.reader.get_tensor(name) for name in names]
        Path(version_dir, "variables").mkdir(parents=True, exist_ok=True)
        tf.raw_ops.SaveV2(prefix=checkpoint_prefix(version_dir), tensor_names=names,
                          shape_and_slices=[""] * len(names), tensors=tensors)


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

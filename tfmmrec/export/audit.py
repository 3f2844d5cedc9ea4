"""Export: which op types each signature of a SavedModel needs, and which servers have them.

TF Serving's C++ loader imports the MetaGraphDef and fails on the first op type its binary does
not register. :func:`signature_ops` lists every op type reachable from each signature (the
signature's output nodes, their inputs, and every function they call, recursively through the
function library: ``StatefulPartitionedCall``, ``While``/``If`` bodies, ``map_fn`` loops …), so
an export can be checked against a server's op set before it is shipped:

    python -m tfmmrec.export.audit runs/models/tfmmrec/1     # ops per signature + their origin

:func:`registered_ops` lists the ops a fresh process registers with only TensorFlow, then with
TF Text, then with ScaNN imported — the three op sets of the servers in the README matrix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tensorflow.core.framework import attr_value_pb2
from tensorflow.core.protobuf import saved_model_pb2

from tfmmrec.errors import ExportError

INIT_SIGNATURE = "__saved_model_init_op"
_OP_LIST_SCRIPT = """
import json, sys
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session as c_api
def ops():
    buf = c_api.TF_GetAllOpList()
    data = c_api.TF_GetBuffer(buf)
    c_api.TF_DeleteBuffer(buf)
    return {op.name for op in op_def_pb2.OpList.FromString(data).op}
core = ops()
import tensorflow_text  # noqa: F401
text = ops() - core
import scann  # noqa: F401
scann_ops = ops() - core - text
json.dump({"core": sorted(core), "tf_text": sorted(text), "scann": sorted(scann_ops)},
          open(sys.argv[1], "w"))
"""


def load_meta_graph(version_dir: str | os.PathLike, tag: str = "serve"):
    path = Path(version_dir) / "saved_model.pb"
    try:
        saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None
    for graph in saved_model.meta_graphs:
        if tag in graph.meta_info_def.tags:
            return graph
    raise ExportError(f"{path} has no MetaGraph tagged {tag!r}")


def _called_functions(node) -> Iterable[str]:
    """Names of library functions a node calls through its attributes (f, body, branches …)."""
    for value in node.attr.values():
        yield from _functions_in_attr(value)


def _functions_in_attr(value: attr_value_pb2.AttrValue) -> Iterable[str]:
    if value.HasField("func"):
        yield value.func.name
        for nested in value.func.attr.values():
            yield from _functions_in_attr(nested)
    if value.HasField("list"):
        for func in value.list.func:
            yield func.name


def signature_ops(version_dir: str | os.PathLike) -> dict[str, set[str]]:
    """``{signature: {op type, ...}}`` for every signature (the init op included)."""
    meta_graph = load_meta_graph(version_dir)
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    function_ops: dict[str, set[str]] = {}

    def ops_of_function(name: str) -> set[str]:
        if name in function_ops:
            return function_ops[name]
        function_ops[name] = found = set()  # placeholder against recursion
        for node in library[name].node_def:
            found |= ops_of_node(node)
        return found

    def ops_of_node(node) -> set[str]:
        found = set()
        if node.op in library:  # a direct call of a library function
            found |= ops_of_function(node.op)
        else:
            found.add(node.op)
        for called in _called_functions(node):
            if called in library:
                found |= ops_of_function(called)
        return found

    def reachable(tensor_names: Iterable[str]) -> set[str]:
        found, stack, seen = set(), [t.split(":")[0].lstrip("^") for t in tensor_names], set()
        while stack:
            name = stack.pop()
            if name in seen or name not in nodes:
                continue
            seen.add(name)
            node = nodes[name]
            found |= ops_of_node(node)
            stack.extend(i.split(":")[0].lstrip("^") for i in node.input)
        return found

    result = {}
    for key, signature in meta_graph.signature_def.items():
        result[key] = reachable([t.name for t in signature.outputs.values()])
    return result


def registered_ops(python: str = sys.executable) -> dict[str, set[str]]:
    """``{"core", "tf_text", "scann"}`` op sets, from a fresh interpreter (no tfmmrec)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "ops.json"
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        result = subprocess.run([python, "-c", _OP_LIST_SCRIPT, str(out)], env=env,
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ExportError(f"listing registered ops failed: {result.stderr[-2000:]}")
        return {k: set(v) for k, v in json.loads(out.read_text()).items()}


def origin(op: str, registry: dict[str, set[str]]) -> str:
    for name in ("core", "tf_text", "scann"):
        if op in registry[name]:
            return name
    return "unregistered"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tfmmrec.export.audit VERSION_DIR", file=sys.stderr)
        return 2
    registry = registered_ops()
    for signature, ops in sorted(signature_ops(args[0]).items()):
        extra = sorted(op for op in ops if origin(op, registry) != "core")
        print(f"{signature}: {len(ops)} op types; outside core TF: "
              f"{', '.join(f'{op} ({origin(op, registry)})' for op in extra) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export: which op types each signature of a SavedModel needs, and which servers have them.

TF Serving's C++ loader imports the MetaGraphDef and fails on the first op type its binary does
not register. :func:`signature_ops` lists every op type reachable from each signature (the
signature's output nodes, their inputs, and every function they call, recursively through the
function library: ``StatefulPartitionedCall``, ``While``/``If`` bodies, ``map_fn`` loops …), so
an export can be checked against a server's op set before it is shipped:

    python -m tfmmrec.export.audit runs/models/tfmmrec/1     # ops per signature + their origin

:func:`variable_reads` follows each variable's handle the same way, so a test can check that no
served table is read both by rows and densely (:func:`copy_on_read`).

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

    return {key: set().union(set(), *(ops_of_node(nodes[name]) for name in reached))
            for key, reached in _signature_nodes(meta_graph).items()}


DENSE_READS = frozenset({"ReadVariableOp"})
ROW_READS = frozenset({"ResourceGather", "ResourceGatherNd"})
_PASS_THROUGH = frozenset({"Identity"})
_CALLS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
_LOOPS = frozenset({"While", "StatelessWhile"})
_CONDITIONALS = frozenset({"If", "StatelessIf", "Case", "StatelessCase"})


def variable_reads(version_dir: str | os.PathLike) -> dict[str, dict[str, set[str]]]:
    """``{variable: {signature: {op type, ...}}}``: the ops each signature applies to each
    variable's handle, followed through calls, loops and conditionals of the function library.

    Why: a row read (``ResourceGather``) switches a variable to copy-on-read for the life of
    the process, after which every dense read (``ReadVariableOp``) copies the whole variable;
    a catalogue table read both ways costs a full copy per search (:func:`copy_on_read`).
    """
    meta_graph = load_meta_graph(version_dir)
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    top_nodes = list(meta_graph.graph_def.node)
    memo: dict[tuple[str, int], frozenset[str]] = {}

    def argument_uses(function_name: str, position: int) -> frozenset[str]:
        key = (function_name, position)
        if key not in memo:
            memo[key] = frozenset()  # against recursion
            function = library[function_name]
            arg = function.signature.input_arg[position].name
            memo[key] = frozenset(_consumer_uses(function.node_def, arg, argument_uses,
                                                 library, in_function=True))
        return memo[key]

    handles = {n.name: (n.attr["shared_name"].s.decode() or n.name)
               for n in top_nodes if n.op == "VarHandleOp"}
    reads: dict[str, dict[str, set[str]]] = {name: {} for name in handles.values()}
    for signature, nodes in _signature_nodes(meta_graph).items():
        reached = [n for n in top_nodes if n.name in nodes]
        for node_name, variable in handles.items():
            uses = _consumer_uses(reached, node_name, argument_uses, library, in_function=False)
            if uses:
                reads[variable][signature] = uses
    return reads


def copy_on_read(version_dir: str | os.PathLike,
                 skip: Iterable[str] = (INIT_SIGNATURE,)) -> dict[str, dict[str, set[str]]]:
    """Variables that some signature reads by rows and some signature reads densely (the
    pairs that make a served process copy the variable on every dense read)."""
    found = {}
    for variable, by_signature in variable_reads(version_dir).items():
        uses = {s: ops for s, ops in by_signature.items() if s not in set(skip)}
        every = set().union(*uses.values()) if uses else set()
        if every & ROW_READS and every & DENSE_READS:
            found[variable] = uses
    return found


def _signature_nodes(meta_graph) -> dict[str, set[str]]:
    """Names of the top-level nodes each signature's outputs depend on."""
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    result = {}
    for key, signature in meta_graph.signature_def.items():
        stack = [t.name.split(":")[0] for t in signature.outputs.values()]
        seen: set[str] = set()
        while stack:
            name = stack.pop().lstrip("^")
            if name in seen or name not in nodes:
                continue
            seen.add(name)
            stack.extend(i.split(":")[0] for i in nodes[name].input)
        result[key] = seen
    return result


def _consumer_uses(nodes, source: str, argument_uses, library, in_function: bool) -> set[str]:
    """Op types applied to the tensor ``source`` (an argument or a node's first output) by
    ``nodes``, following pass-through ops and the arguments of called functions."""
    def produced_by_source(ref: str) -> bool:
        if ref.startswith("^"):
            return False
        parts = ref.split(":")
        if parts[0] != source:
            return False
        return parts[-1] == "0" or len(parts) == 1

    uses: set[str] = set()
    for node in nodes:
        positions = [i for i, ref in enumerate(node.input) if produced_by_source(ref)]
        for position in positions:
            uses |= _node_uses(node, position, nodes, argument_uses, library, in_function)
    return uses


def _node_uses(node, position, nodes, argument_uses, library, in_function) -> set[str]:
    if node.op in _PASS_THROUGH:
        return _consumer_uses(nodes, node.name, argument_uses, library, in_function)
    if node.op in _CALLS:
        return set(argument_uses(node.attr["f"].func.name, position))
    if node.op in library:
        return set(argument_uses(node.op, position))
    if node.op in _LOOPS:
        return set(argument_uses(node.attr["body"].func.name, position)) | set(
            argument_uses(node.attr["cond"].func.name, position))
    if node.op in _CONDITIONALS:
        if position == 0:
            return set()
        names = ([node.attr["then_branch"].func.name, node.attr["else_branch"].func.name]
                 if "then_branch" in node.attr
                 else [f.name for f in node.attr["branches"].list.func])
        return set().union(*(argument_uses(name, position - 1) for name in names))
    return {node.op}


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
    trapped = copy_on_read(args[0])
    print("variables read both by rows and densely (copy-on-read): "
          f"{', '.join(sorted(trapped)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Op audit and TF1 loading of every export kind, as TF Serving's C++ loader does it.

For each kind: every op type reachable from every signature (through the function library) must
be registered by the server the kind targets — stock TF Serving >= 2.20 has core TF + TF Text,
the ScaNN build adds ``Scann>*``. Then each export is loaded in a fresh interpreter as a TF1
graph + session (``tf.compat.v1.saved_model.loader.load``) that registers only that server's
ops (plain kinds: ``scann`` is never imported), and every signature is run by tensor name with
the export's own warmup requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.export.conftest import EXPORT_KINDS
from tfmmrec.export.audit import copy_on_read, registered_ops, signature_ops, variable_reads
from tfmmrec.export.index import index_class
from tfmmrec.export.loader import ExportedModel

SIGNATURES = {"serving_default", "recommend", "embed_query", "query_text", "query_image",
              "query_audio", "recommend_session", "embed_items"}

TF1_LOADER = """
import json, sys
path, answer, server = sys.argv[1:4]
import tensorflow as tf
import tensorflow_text  # noqa: F401  (TF Serving >= 2.20 links the TF Text ops)
if server == "scann":
    import scann  # noqa: F401  (the tf-serving-scann build links the ScaNN ops)
from tensorflow_serving.apis import prediction_log_pb2

requests = {}
for record in tf.compat.v1.io.tf_record_iterator(path + "/assets.extra/tf_serving_warmup_requests"):
    request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
    requests[request.model_spec.signature_name] = request

def plain(value):
    if value.dtype == object:
        return [[x.decode() for x in row] for row in value.tolist()]
    return value.tolist()

out = {"signatures": {}}
graph = tf.Graph()
with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
    meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    for key, signature in meta.signature_def.items():
        if key == "__saved_model_init_op":
            continue
        request = requests[key]
        feeds = {signature.inputs[alias].name: tf.make_ndarray(proto)
                 for alias, proto in request.inputs.items()}
        fetches = {alias: info.name for alias, info in signature.outputs.items()}
        out["signatures"][key] = {alias: plain(value)
                                  for alias, value in session.run(fetches, feeds).items()}
out["modules"] = sorted({m.split(".")[0] for m in sys.modules
                         if m.split(".")[0] in ("scann", "tfmmrec", "tf_keras", "keras_nlp")})
json.dump(out, open(answer, "w"))
"""


@pytest.fixture(scope="module")
def op_registry():
    return registered_ops()


@pytest.fixture(scope="module")
def audits(exported):
    _, versions = exported
    return {kind: signature_ops(path) for kind, path in versions.items()}


def test_audit_walks_the_function_library(audits):
    """Signatures call their bodies through StatefulPartitionedCall; the walk must reach the
    ops inside (the matmul of the index, the tokenizer's ops, map_fn's decoders)."""
    ops = audits["brute_force"]
    assert set(ops) >= SIGNATURES
    assert {"MatMul", "TopKV2"} <= ops["recommend"]
    assert "DecodeWav" in ops["query_audio"]
    assert "ExtractJpegShape" in ops["query_image"]
    assert any(op.startswith("TFText>") or "Wordpiece" in op or "RegexSplit" in op
               for op in ops["query_text"]), sorted(ops["query_text"])
    assert not any(op.startswith("Scann>") for op in set().union(*ops.values()))
    assert {"Scann>ScannSearchBatched"} <= audits["scann"]["recommend"]


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_every_op_is_on_the_target_server(kind, audits, op_registry):
    allowed = op_registry["core"] | op_registry["tf_text"]
    if index_class(kind).op_namespaces:
        allowed |= op_registry["scann"]
    outside = {signature: sorted(ops - allowed) for signature, ops in audits[kind].items()
               if ops - allowed}
    assert outside == {}, f"{kind} export needs ops its server lacks: {outside}"


def test_only_query_text_needs_tf_text(audits, op_registry):
    """The README's matrix: user-id and media signatures run on core TF alone
    (``recommend_session`` tokenizes its optional ``viewed_text`` in-graph)."""
    for kind in ("brute_force", "partitioned"):
        for signature, ops in audits[kind].items():
            needs_text = bool(ops & op_registry["tf_text"])
            assert needs_text == (signature in ("query_text", "recommend_session")), (
                kind, signature)


def tf1_session_answers(path, work, server: str = "stock") -> dict:
    """Run the export at ``path`` as a TF1 graph + session with only ``server``'s ops (what
    the C++ loader does), in a fresh process; its answers per signature."""
    script = work / "tf1_loader.py"
    script.write_text(textwrap.dedent(TF1_LOADER))
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    answer = work / f"answer-{len(list(work.glob('answer-*.json')))}.json"
    result = subprocess.run([sys.executable, str(script), str(path), str(answer), server],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{path}: {result.stderr[-3000:]}"
    return json.loads(answer.read_text())


def assert_stock_ops(path, op_registry) -> None:
    """Every op of every signature is in core TF or TF Text (a stock TF Serving >= 2.20)."""
    ops = signature_ops(path)
    allowed = op_registry["core"] | op_registry["tf_text"]
    assert {s: sorted(o - allowed) for s, o in ops.items() if o - allowed} == {}


@pytest.fixture(scope="module")
def tf1_answers(exported, tmp_path_factory):
    _, versions = exported
    work = tmp_path_factory.mktemp("tf1")
    return {kind: tf1_session_answers(
                path, work, "scann" if index_class(kind).op_namespaces else "stock")
            for kind, path in versions.items()}


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_tf1_session_runs_every_signature_by_tensor_name(kind, tf1_answers, exported):
    _, versions = exported
    answer = tf1_answers[kind]
    assert set(answer["signatures"]) == SIGNATURES
    expected_modules = ["scann"] if kind == "scann" else []
    assert answer["modules"] == expected_modules  # never tfmmrec, Keras or KerasNLP
    model = ExportedModel(versions[kind])
    for signature, outputs in answer["signatures"].items():
        for alias, value in outputs.items():
            if alias in ("scores", "embedding", "retrieval_scores"):
                assert np.all(np.isfinite(value)), (signature, alias)
    default = answer["signatures"]["serving_default"]["item_ids"]
    assert np.asarray(default).shape == (1, model.metadata["default_k"])


def test_tf1_answers_agree_across_plain_kinds(tf1_answers):
    """On the tiny catalogue the partitioned index probes every partition, so it is exact."""
    for signature in ("serving_default", "recommend", "query_text", "query_image"):
        assert (tf1_answers["partitioned"]["signatures"][signature]["item_ids"]
                == tf1_answers["brute_force"]["signatures"][signature]["item_ids"]), signature
    np.testing.assert_allclose(tf1_answers["partitioned"]["signatures"]["recommend"]["scores"],
                               tf1_answers["brute_force"]["signatures"]["recommend"]["scores"],
                               atol=1e-5)



@pytest.fixture(scope="module")
def xla_export(exported, tiny_trained, tmp_path_factory):
    """The tiny model exported with ``export.jit_compile=true`` (brute-force index)."""
    from tfmmrec import pipeline
    from tfmmrec.config import load_config

    config, _ = exported
    config = load_config(config, [f"export.base_dir={tmp_path_factory.mktemp('xla')}",
                                  "export.jit_compile=true"])
    return pipeline.export(config, model=tiny_trained.model, workspace=tiny_trained.workspace,
                           index="brute_force")


def test_jit_compiled_export_uses_stock_ops_and_answers_like_the_plain_one(
        xla_export, op_registry, tf1_answers, tmp_path):
    """``export.jit_compile`` marks the text backbone for XLA (TF Serving needs
    ``--xla_cpu_compilation_enabled``) but adds no op outside core TF + TF Text, and a TF1
    graph + session (with XLA:CPU, as pip TensorFlow has) gives the plain export's answers."""
    from tfmmrec.export.audit import load_meta_graph

    assert ExportedModel(xla_export).metadata["jit_compile"] is True
    library = load_meta_graph(xla_export).graph_def.library.function
    assert any(f.attr["_XlaMustCompile"].b for f in library)
    assert_stock_ops(xla_export, op_registry)
    compiled = tf1_session_answers(xla_export, tmp_path)["signatures"]
    plain = tf1_answers["brute_force"]["signatures"]
    for signature in ("query_text", "recommend_session"):
        assert compiled[signature]["item_ids"] == plain[signature]["item_ids"], signature
    np.testing.assert_allclose(compiled["query_text"]["scores"], plain["query_text"]["scores"],
                               atol=1e-5)


# The fused backbone XLA-compiled runs only with -m slow (the default suite's time budget): its two
# parts are each checked by default, XLA marking + TF1 answers on the plain backbone by
# test_jit_compiled_export_uses_stock_ops_and_answers_like_the_plain_one, the fused backbone's ops
# and TF1 answers by this test's [float32] case.
@pytest.fixture(scope="module", params=[("float32", False, "variables"),
                                        ("bfloat16", False, "variables"),
                                        pytest.param(("float32", True, "variables"),
                                                     marks=pytest.mark.slow),
                                        ("float32", False, "constants")],
                ids=["float32", "bfloat16", "xla", "float32_constants"])
def fused_export(request, exported, tiny_trained, tmp_path_factory):
    """The tiny model exported with ``export.text_backbone=fused`` (brute-force index), in
    float32, bfloat16, float32 XLA-compiled (``export.jit_compile``), or float32 with the
    kernels as graph constants (``export.text_weights=constants``)."""
    from tfmmrec import pipeline
    from tfmmrec.config import load_config

    config, _ = exported
    precision, jit, weights = request.param
    config = load_config(config, [f"export.base_dir={tmp_path_factory.mktemp('fused')}",
                                  "export.text_backbone=fused",
                                  f"export.text_precision={precision}",
                                  f"export.jit_compile={str(jit).lower()}",
                                  f"export.text_weights={weights}"])
    path = pipeline.export(config, model=tiny_trained.model, workspace=tiny_trained.workspace,
                           index="brute_force")
    return precision, jit, weights, path


def test_fused_text_export_uses_stock_ops_and_answers_like_the_plain_one(
        fused_export, op_registry, tf1_answers, tiny_trained, tmp_path):
    """``export.text_backbone=fused`` (float32, also XLA-compiled or with constant kernels:
    the plain export's scores to 1e-5; bfloat16: bfloat16 weight matmuls, scores close, same
    top item) adds no op outside core TF + TF Text, runs as a TF1 graph + session, and leaves
    the workspace's encoder on the Keras backbone."""
    precision, jit, weights, path = fused_export
    metadata = ExportedModel(path).metadata
    assert (metadata["text_backbone"], metadata["text_precision"], metadata["jit_compile"],
            metadata["text_weights"]) == ("fused", precision, jit, weights)
    assert tiny_trained.workspace.encoders["text"].inference_backbone is None
    assert_stock_ops(path, op_registry)
    from tfmmrec.export.audit import load_meta_graph

    library = load_meta_graph(path).graph_def.library.function
    matmul_types = {tf.dtypes.as_dtype(node.attr["T"].type).name
                    for function in library for node in function.node_def if node.op == "MatMul"}
    assert ("bfloat16" in matmul_types) == (precision == "bfloat16"), matmul_types
    hidden = tiny_trained.workspace.encoders["text"].feature_dim
    qkv_constants = [node for function in library for node in function.node_def
                     if node.op == "Const" and [d.size for d in
                                                node.attr["value"].tensor.tensor_shape.dim]
                     == [hidden, 3 * hidden]]
    assert bool(qkv_constants) == (weights == "constants"), len(qkv_constants)
    fused = tf1_session_answers(path, tmp_path)["signatures"]
    plain = tf1_answers["brute_force"]["signatures"]
    assert set(fused) == SIGNATURES
    if precision == "float32":
        for signature in ("query_text", "recommend_session"):
            assert fused[signature]["item_ids"] == plain[signature]["item_ids"], signature
        np.testing.assert_allclose(fused["query_text"]["scores"], plain["query_text"]["scores"],
                                   atol=1e-5)
    else:
        assert fused["query_text"]["item_ids"][0][0] == plain["query_text"]["item_ids"][0][0]
        np.testing.assert_allclose(fused["query_text"]["scores"], plain["query_text"]["scores"],
                                   atol=2e-2)


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_no_served_variable_is_read_both_by_rows_and_densely(kind, exported):
    """One ``ResourceGather`` makes every later dense read of that variable copy it whole (TF's
    copy-on-read), so a catalogue table gathered by one signature and searched densely by
    another costs a full copy per search. The walk must see both kinds of read."""
    _, versions = exported
    reads = variable_reads(versions[kind])
    every = set().union(*(ops for by_signature in reads.values()
                          for ops in by_signature.values()))
    assert {"ReadVariableOp", "ResourceGather"} <= every, sorted(every)
    assert copy_on_read(versions[kind]) == {}


def test_the_audit_command_prints_ops_outside_core_and_copy_on_read_variables(
        exported, op_registry, monkeypatch, capsys):
    from tfmmrec.export import audit

    monkeypatch.setattr(audit, "registered_ops", lambda: op_registry)
    assert audit.main([str(exported[1]["scann"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    recommend = next(line for line in lines if line.startswith("recommend:"))
    assert "Scann>ScannSearchBatched (scann)" in recommend
    assert lines[-1] == "variables read both by rows and densely (copy-on-read): none"

"""Property-based fuzzing of request decoding (Hypothesis, bounded examples and time).

Whatever bytes or JSON arrive, decoding either succeeds or raises a RequestStatus (a 4xx /
INVALID_ARGUMENT-class answer) — never another exception (an HTTP 500 / gRPC INTERNAL) — and an
accepted TensorProto never expands past the byte limit.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from tfmmrec.serving.json_tensor import array_to_json, json_to_tensor
from tfmmrec.serving.predict import check_tensor_proto
from tfmmrec.serving.rest import fill_inputs, parse_json
from tfmmrec.serving.status import RequestStatus

FUZZ = settings(max_examples=60, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
DTYPES = [types_pb2.DT_STRING, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_FLOAT,
          types_pb2.DT_DOUBLE, types_pb2.DT_BOOL, types_pb2.DT_UINT8, types_pb2.DT_HALF,
          types_pb2.DT_COMPLEX64, 0, 999]
LIMIT = 1 << 20

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
           | st.builds(lambda s: {"b64": s}, st.text(max_size=8)))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=6), children, max_size=3),
                           max_leaves=20)


def info(dtype: int, dims: list[int]) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))


RECOMMEND = {"user_id": info(types_pb2.DT_STRING, [-1]), "k": info(types_pb2.DT_INT32, [])}


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8",
                                                                                "surrogatepass")))
def test_any_body_parses_or_is_a_client_error(body):
    try:
        assert isinstance(parse_json(body), dict)
    except RequestStatus as status:
        assert status.http_status == 400


@FUZZ
@given(json_values)
def test_any_document_fills_inputs_or_is_a_client_error(document):
    request = predict_pb2.PredictRequest()
    try:
        fill_inputs(document if isinstance(document, dict) else {"inputs": document},
                    RECOMMEND, request)
    except RequestStatus as status:
        assert status.http_status in (400, 501)


@FUZZ
@given(json_values, st.sampled_from(DTYPES))
def test_json_to_tensor_yields_a_consistent_proto_or_a_client_error(value, dtype):
    try:
        proto = json_to_tensor(value, dtype)
    except RequestStatus as status:
        assert status.http_status in (400, 501)
        return
    array = tf.make_ndarray(proto)
    assert array.shape == tuple(d.size for d in proto.tensor_shape.dim)


@FUZZ
@given(st.sampled_from(DTYPES), st.lists(st.integers(-3, 2**40), max_size=5),
       st.lists(st.binary(max_size=5), max_size=4), st.lists(st.integers(-5, 5), max_size=4),
       st.binary(max_size=16))
def test_accepted_tensor_protos_never_expand_past_the_limit(dtype, dims, strings, ints,
                                                           content):
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(strings)
    elif content and dtype in (types_pb2.DT_INT32, types_pb2.DT_FLOAT):
        proto.tensor_content = content
    else:
        proto.int_val.extend(ints)
    try:
        check_tensor_proto("x", proto, LIMIT)
    except RequestStatus as status:
        assert status.http_status == 400
        return
    try:
        array = tf.make_ndarray(proto)
    except Exception:
        return
    assert array.nbytes <= LIMIT


@FUZZ
@given(st.lists(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=2, max_size=2),
                min_size=1, max_size=4),
       st.lists(st.binary(max_size=10), min_size=1, max_size=4))
def test_client_encoding_round_trips_through_the_server_decoder(ints, blobs):
    """The client's encoder and the server's decoder are one codec: values come back equal."""
    numbers = np.array(ints, np.int32)
    assert np.array_equal(tf.make_ndarray(json_to_tensor(array_to_json(numbers),
                                                         types_pb2.DT_INT32)), numbers)
    data = np.array(blobs, dtype=object)
    decoded = tf.make_ndarray(json_to_tensor(array_to_json(data), types_pb2.DT_STRING))
    assert decoded.tolist() == blobs

"""Serving: the status a request ends with (gRPC code + message), shared by gRPC, REST and client.

TF Serving answers every failure with a ``tensorflow::Status``; gRPC carries its code as is and
the REST API maps it to an HTTP code with the table in ``model_servers/http_server.cc``, which
:data:`HTTP_STATUS` copies so that both front ends of ``tfmmrec serve`` say the same thing.
"""

from __future__ import annotations

import grpc
import tensorflow as tf

from tfmmrec.errors import one_line_error

# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# The inverse, for a REST client that only sees the HTTP code (ambiguous codes pick the usual one).
# 413 is ours: TF Serving's REST server has no body limit, ``tfmmrec serve`` has one.
GRPC_CODE_FOR_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

MAX_VERSION = 2**63 - 1  # ModelSpec.version is an Int64Value: REST URLs and clients alike

# tf.errors.OpError subclasses carry the canonical code; gRPC uses the same numbering.
_GRPC_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class RequestStatus(Exception):
    """A request failed with ``code`` and TF Serving's wording of ``message`` (server side).

    The message is kept as one line (``one_line_error``): every REST body, gRPC detail and
    status record a client sees is made from a ``RequestStatus``, so this is the one place a
    TensorFlow error text is cleaned on the server."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        self.message = one_line_error(message)
        super().__init__(self.message)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def invalid_argument(message: str) -> RequestStatus:
    return RequestStatus(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestStatus:
    return RequestStatus(grpc.StatusCode.NOT_FOUND, message)


def from_tf_error(error: tf.errors.OpError) -> RequestStatus:
    """A TensorFlow run-time error (failed assert, undecodable image/WAV …) as a request status."""
    code = _GRPC_BY_VALUE.get(error.error_code, grpc.StatusCode.UNKNOWN)
    return RequestStatus(code, error.message)

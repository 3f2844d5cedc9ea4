"""Serving: the server's default limits, in one light module (no TensorFlow or gRPC import) so
``tfmmrec serve --help`` shows them without loading either."""

# The largest gRPC message / REST body accepted (TF Serving's gRPC default is 4 MiB; image and
# audio queries need more).
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20

# REST connections served at once, a thread each; more are answered 503 from the accept loop.
DEFAULT_MAX_CONNECTIONS = 256
# (``--rest-max-connections-per-client`` has no default cap of its own: behind a proxy or a
# load balancer every connection comes from one address.)

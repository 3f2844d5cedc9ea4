"""Serving: the server's default limits, in one light module (no TensorFlow or gRPC import) so
``tfmmrec serve --help`` shows them without loading either."""

# The largest gRPC message / REST body accepted (TF Serving's gRPC default is 4 MiB; image and
# audio queries need more).
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20

# REST connections served at once, a thread each; more are answered 503 from the accept loop.
DEFAULT_MAX_CONNECTIONS = 256

# REST connections one client address may hold of them (at most the cap above): a single
# client's slowloris no longer takes every slot, only this many.
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 32

"""Environment set-up, run first by ``import tfmmrec``: Keras 2 for TFRS, custom ops for loading.

TFRS and ``hub.KerasLayer`` need Keras 2 (``tf-keras``). TensorFlow picks the Keras version the
first time ``tf.keras`` is touched, from ``TF_USE_LEGACY_KERAS``; so the variable must be set
before that, and a process that already runs Keras 3 cannot be switched back.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from tfmmrec.errors import EnvironmentSetupError

KERAS3_MESSAGE = (
    "TensorFlow was already imported with Keras 3, but tfmmrec (like TFRS and hub.KerasLayer) "
    "needs Keras 2 (tf-keras). Fix: import tfmmrec before tensorflow, or set "
    "TF_USE_LEGACY_KERAS=1 in the environment before starting Python (in a notebook: "
    "restart the kernel and run `import tfmmrec` first)."
)


_USER_ENVIRONMENT = frozenset(os.environ)  # what the user set, before tfmmrec sets defaults


def configure_keras() -> None:
    """Select Keras 2 before TensorFlow loads; raise if Keras 3 is already live."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet_output() may lower it further
    if "TF_CPP_MIN_LOG_LEVEL" not in _USER_ENVIRONMENT:
        # The same threshold (errors only) for the native code TF's variable does not reach:
        # ScaNN's absl lines (I…/W… partitioner, gmm_utils) and glog-based libraries. Not a
        # redirection: a user's own C-level and Python lines still show.
        os.environ.setdefault("GLOG_minloglevel", "2")
        after_import("tensorflow", quiet_absl_logs)
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if "tensorflow" in sys.modules:
        if not keras2_active():
            raise EnvironmentSetupError(KERAS3_MESSAGE)
        _pin_tensorflow_keras()


def _undo_import_thresholds() -> None:
    """``--verbose``: the native thresholds ``import tfmmrec`` set by default (not the ones
    the user set) go, so every native line shows again."""
    if "GLOG_minloglevel" not in _USER_ENVIRONMENT:
        os.environ.pop("GLOG_minloglevel", None)
    if "TF_CPP_MIN_LOG_LEVEL" in _USER_ENVIRONMENT:
        return
    sys.meta_path[:] = [f for f in sys.meta_path if not (
        isinstance(f, _AfterImport) and f.name == "tensorflow" and f.callback == quiet_absl_logs)]
    if "tensorflow" in sys.modules:
        show_absl_logs()


def _pin_tensorflow_keras() -> None:
    """Make ``import tensorflow.keras`` Keras 2 when TensorFlow was imported before tfmmrec.

    TensorFlow reads ``TF_USE_LEGACY_KERAS`` once, at its import, to choose the folder that the
    submodule ``tensorflow.keras`` resolves to. Imported before this variable was set, that is
    Keras 3's, and KerasNLP's ``import tensorflow.keras`` then rebinds ``tf.keras`` to Keras 3
    in mid-session (a restore then built encoders without weights and refused them as
    "changed"). Registering the Keras 2 module under that name first keeps both on Keras 2."""
    if sys.modules.get("tensorflow.keras") is None:
        import importlib

        sys.modules["tensorflow.keras"] = importlib.import_module("tf_keras.api._v2.keras")


def keras2_active() -> bool:
    """True when ``tf.keras`` resolves to tf-keras (Keras 2)."""
    import tensorflow as tf

    return tf.keras.Model.__module__.startswith("tf_keras")


def register_custom_ops(scann: bool = True) -> None:
    """Register the ops that exported SavedModels use (text tokenizer ops, ScaNN search ops).

    ``tf.saved_model.load`` fails on an unregistered op, so loaders call this first. Imports are
    idempotent, so calling it again is free.
    """
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops KerasNLP emits)

    if scann:
        import scann as _scann  # noqa: F401  (registers the Scann>ScannSearch* ops)


# --- output -------------------------------------------------------------------------------------

NATIVE_LOG_VARIABLES = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow C++: CUDA probing, oneDNN notices, XLA
    "GLOG_minloglevel": "2",  # glog-based native libraries
}
NOISY_PYTHON_LOGGERS = ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "apache_beam")


class _LibraryRecordsOnRoot(logging.Filter):
    """Below ERROR, drop what a noisy library logs on the root logger (``logging.warning(...)``
    in its module, as Beam's BigQuery client does at import), as its own logger's level would.

    Every record passes through here, so the libraries' folders are not looked up per record:
    they are kept with the size of ``sys.modules`` they were found at and found again only
    once it changed (a library can only start logging from its folder once it is imported,
    and an import grows ``sys.modules``)."""

    def __init__(self) -> None:
        super().__init__()
        self._folders: tuple[int, tuple[str, ...]] = (-1, ())  # (len(sys.modules), folders)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.name != "root":
            return True
        return not record.pathname.startswith(self._library_folders())

    def _library_folders(self) -> tuple[str, ...]:
        """``_library_folders()``, found again only after an import (one pair, replaced whole,
        so a record logged from another thread never sees a size with stale folders)."""
        seen, folders = self._folders
        if seen != len(sys.modules):
            seen = len(sys.modules)
            folders = _library_folders()
            self._folders = (seen, folders)
        return folders


def _library_folders() -> tuple[str, ...]:
    """The install folders of the noisy libraries imported so far (a user's own folder that
    happens to be called ``tensorflow`` is not one of them)."""
    folders = []
    for name in NOISY_PYTHON_LOGGERS:
        module = sys.modules.get(name)
        if getattr(module, "__file__", None):
            folders.append(os.path.dirname(module.__file__) + os.sep)
    return tuple(folders)


def quiet_output(verbose: bool = False) -> None:
    """What a command-line run shows: its own progress and results, not library chatter.

    Unless ``verbose``: TensorFlow's C++ log threshold is raised before TensorFlow loads (only
    effective then; the CLI imports TensorFlow lazily, after this), Python warnings (Keras
    deprecations) are ignored and the ``tensorflow``/``absl`` Python loggers show errors only.
    C++ code logging through absl, which no variable reaches (ScaNN's index builder), shows
    errors only once TensorFlow has loaded (:func:`quiet_absl_logs`). Variables the user
    already set are kept (a ``TF_CPP_MIN_LOG_LEVEL`` of their own keeps absl's level too).
    Nothing is redirected: every other line written to stderr, from Python or C, still shows
    (the CLI also sends what is left of native output to a file, ``native_stderr_to``).
    Public as ``tfmmrec.quiet_output``: scripts and notebooks call it right after ``import
    tfmmrec`` (every benchmark does).
    """
    if verbose:
        _undo_import_thresholds()
        return
    for name, value in NATIVE_LOG_VARIABLES.items():
        if name not in _USER_ENVIRONMENT:
            os.environ[name] = value
    if "TF_CPP_MIN_LOG_LEVEL" not in _USER_ENVIRONMENT:
        after_import("tensorflow", quiet_absl_logs)
    warnings.filterwarnings("ignore")
    for name in NOISY_PYTHON_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    after_import("tensorflow", _quiet_tensorflow_logger)
    root = logging.getLogger()
    if not any(isinstance(f, _LibraryRecordsOnRoot) for f in root.filters):
        root.addFilter(_LibraryRecordsOnRoot())
    if "absl.logging" in sys.modules or _importable("absl.logging"):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


# absl's ``LogSeverityAtLeast::kError``, and ``absl::SetMinLogLevel`` as the linker names it
# (``absl::lts_<date>::`` in an LTS build, ``absl::`` otherwise).
_ABSL_INFO, _ABSL_ERROR = 0, 2
_ABSL_SET_MIN_LOG_LEVEL = re.compile(
    rb"_ZN4absl(?:\d+lts_\d+)?14SetMinLogLevelENS(?:0_|_)18LogSeverityAtLeastE")
_TF_FRAMEWORK = ("libtensorflow_framework.so.2", "libtensorflow_framework.2.dylib")


def quiet_absl_logs() -> bool:
    """Raise the minimum level of the absl logging in TensorFlow's framework library to ERROR.

    ScaNN's ops log through that absl (it links against the framework library): "WARNING: All
    log messages before absl::InitializeLog() is called are written to STDERR", then ``I0000
    … partitioner_factory_base.cc`` and ``W0000 … gmm_utils.cc`` lines, straight to descriptor
    2, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. absl reads no variable for its level, so it is
    set in-process, as ``absl::SetMinLogLevel`` (exported by the library) sets it: a threshold,
    like TensorFlow's own, not a redirection of stderr, so it is safe in a library and a
    notebook. Returns whether it was set: not before TensorFlow has loaded, nor on a build
    that does not export the function (the lines then show as before)."""
    return _set_absl_min_log_level(_ABSL_ERROR)


def show_absl_logs() -> bool:
    """Undo :func:`quiet_absl_logs` (absl's default threshold, INFO): what ``--verbose``
    shows."""
    return _set_absl_min_log_level(_ABSL_INFO)


def _set_absl_min_log_level(level: int) -> bool:
    library = _loaded_tensorflow_framework()
    if library is None:
        return False
    symbol = _exported_name(library, _ABSL_SET_MIN_LOG_LEVEL)
    if symbol is None:
        return False
    import ctypes

    set_min_log_level = getattr(ctypes.CDLL(library, mode=os.RTLD_NOLOAD), symbol)
    set_min_log_level.argtypes, set_min_log_level.restype = [ctypes.c_int], None
    set_min_log_level(level)
    return True


def _loaded_tensorflow_framework() -> str | None:
    """The path of TensorFlow's framework library, if the process has loaded it."""
    import ctypes

    tensorflow = sys.modules.get("tensorflow")
    folder = os.path.dirname(getattr(tensorflow, "__file__", None) or "")
    if not folder or not hasattr(os, "RTLD_NOLOAD"):
        return None
    for name in _TF_FRAMEWORK:
        path = os.path.join(folder, name)
        try:
            ctypes.CDLL(path, mode=os.RTLD_NOLOAD)  # only finds a library already loaded
        except OSError:
            continue
        return path
    return None


def _exported_name(library: str, pattern: re.Pattern[bytes]) -> str | None:
    """The first symbol name in ``library``'s file matching ``pattern`` (its dynamic string
    table holds every exported name; mapped, not read: the framework is ~250 MB)."""
    import mmap

    try:
        with open(library, "rb") as file, \
                mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            match = pattern.search(data)
            return match.group().decode() if match else None  # while the file is mapped
    except (OSError, ValueError):
        return None


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback`` right after module ``name`` has been imported, once, then leaves
    ``sys.meta_path``. Python has no post-import hook: this finder takes the spec the other
    finders give and wraps its loader's ``exec_module``. A look-up that imports nothing
    (``importlib.util.find_spec``) wraps a loader never run, and the finder stays for the
    real import."""

    def __init__(self, name: str, callback: Callable[[], object]) -> None:
        self.name, self.callback = name, callback
        self._looking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self._looking:
            return None
        self._looking = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._looking = False
        execute = getattr(getattr(spec, "loader", None), "exec_module", None)
        if execute is None:
            return spec

        def exec_module(module) -> None:
            execute(module)
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            _run_quietly(self.callback)

        spec.loader.exec_module = exec_module
        return spec


def _quiet_tensorflow_logger() -> None:
    """TensorFlow's ``get_logger()`` sets its logger to INFO the first time it runs in an
    interactive session (a notebook kernel), after ``quiet_output`` set it to ERROR, so
    "INFO:tensorflow:Assets written to …" showed in notebooks: call it first, then set it."""
    from tensorflow.python.platform import tf_logging

    tf_logging.get_logger().setLevel(logging.ERROR)


def after_import(name: str, callback: Callable[[], object]) -> None:
    """Run ``callback`` now if module ``name`` is imported, else right after it is (once)."""
    if name in sys.modules:
        _run_quietly(callback)
    elif not any(isinstance(f, _AfterImport) and f.name == name and f.callback == callback
                 for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))


def _run_quietly(callback: Callable[[], object]) -> None:
    """A hook must never break the import it follows: its failure is logged at debug level."""
    try:
        callback()
    except Exception:
        logging.getLogger(__name__).debug("%s failed", callback, exc_info=True)


@contextlib.contextmanager
def native_stderr_to(path: str | os.PathLike) -> Iterator[Path]:
    """Send what C/C++ code writes to file descriptor 2 into ``path``; Python's ``sys.stderr``
    (log lines, progress bars, error messages) keeps writing where it did.

    ScaNN and TensorFlow's C++ runtime log through absl straight to descriptor 2, with no
    setting to silence them; this is the one place their lines can be kept off the screen.
    Restored on exit; the file is kept for reading when something went wrong.
    """
    path = Path(path)
    sys.stderr.flush()
    saved = os.dup(2)
    swapped = getattr(sys.stderr, "fileno", None) is not None and _fd(sys.stderr) == 2
    python_stderr = sys.stderr
    try:
        with open(path, "wb") as target:
            os.dup2(target.fileno(), 2)
        if swapped:  # the real stderr object writes to descriptor 2: give it the saved one
            sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
        yield path
    finally:
        if swapped:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)


def _fd(stream) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def stdout_silenced() -> Iterator[None]:
    """Hide what an import prints on stdout (keras-core announces "Using TensorFlow backend")."""
    with contextlib.redirect_stdout(open(os.devnull, "w")) as sink:
        try:
            yield
        finally:
            sink.close()


class _CurrentStderr(logging.StreamHandler):
    """A stderr handler that follows ``sys.stderr`` (``native_stderr_to`` swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; sys.stderr wins
        pass


class _Format(logging.Formatter):
    """Progress and results as plain lines; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def show_progress(quiet: bool = False) -> logging.Handler:
    """Show tfmmrec's progress and results (``quiet``: warnings only) on stderr as plain
    lines, as the command line does: the library logs them to the ``tfmmrec`` logger, which
    Python shows nowhere by default. Public as ``tfmmrec.show_progress``; calling it again
    keeps one handler. Returns the handler (``logging.getLogger().removeHandler`` undoes it)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _CurrentStderr)), None)
    if handler is None:
        handler = _CurrentStderr()
        handler.setFormatter(_Format())
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.getLogger("tfmmrec").setLevel(logging.WARNING if quiet else logging.INFO)
    return handler

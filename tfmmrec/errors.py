"""The error hierarchy every layer raises: messages say what is wrong, where, and how to fix it.

The CLI prints these without a stack trace and exits non-zero; the Python API raises them.
"""

from __future__ import annotations

import re
import reprlib


class TfmmrecError(Exception):
    """Base class for every error tfmmrec raises on purpose."""


class EnvironmentSetupError(TfmmrecError):
    """The Python/TensorFlow environment cannot run tfmmrec as it is."""


class ConfigError(TfmmrecError):
    """A configuration value or file is invalid."""


class DataError(TfmmrecError):
    """A dataset folder, table, row or media file is invalid."""


class MediaDecodeError(DataError):
    """An image or audio file (or bytes) could not be decoded."""


class TrainingError(TfmmrecError):
    """Training cannot start or continue (e.g. unwritable output, bad checkpoint)."""


class ExportError(TfmmrecError):
    """A model could not be exported, or an export is invalid."""


class ServingError(TfmmrecError):
    """A serving request failed (connection, deadline, status from the server)."""


# --- TensorFlow's error text, for people -------------------------------------------------------

# "Graph execution error: Detected at node X defined at (most recent call last): <stack>" framing
# that eager calls of a tf.function put before the op's message; the stack lines are indented.
_GRAPH_PREAMBLE = re.compile(
    r"^\s*(?:Graph execution error:\s*)?(?:Detected at node .*? defined at \(most recent call "
    r"last\):[^\n]*\n(?:(?:[ \t][^\n]*|<stack traces unavailable>[^\n]*)?\n)*)*")
# TF1-style "2 root error(s) found.\n  (0) INVALID_ARGUMENT: <message>": keep the first one.
_ROOT_ERRORS = re.compile(r"^\s*\d+ root error\(s\) found\.\s*\(0\) [A-Z_]+:\s*")
# "\t [[{{node assert/Assert}}]]", "[[{{function_node f}}{{node n}}]]", "[[Node: ...]]"
_NODE_DECORATION = re.compile(r"\s*\[\[(?:\{\{|[Nn]ode[: ]).*$", re.DOTALL)
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\](?:\s*name:.*)?$")
# "{{function_node __inference_signature_wrapper_<lambda>_4934}} " before the message of an op
# that failed in a nested function (a signature calling a tf.function: serving_default does).
_FUNCTION_FRAMING = re.compile(r"^(?:\s*\{\{[^{}\n]*\}\})+\s*")
# A failed assert, after whatever framing TensorFlow puts before it on its line: "{{node …}}",
# "{{function_node …}}", a node name ("node Assert/Assert: "), a status code name
# ("INVALID_ARGUMENT: ") or a root-error index ("(0) "). Human context ("warmup request failed:
# …") is not framing: such a message keeps its first line as it is.
_ASSERT = re.compile(r"^(?:\s*(?:\{\{[^{}\n]*\}\}|[A-Z][A-Z_]+:|\(\d+\)|[Nn]ode:?\s+[^\s:]+:))*"
                     r"\s*assertion failed:")
# The data of tf.debugging.assert_* (x OP y): "[Condition x >= y did not hold element-wise:]".
_CONDITION = re.compile(r"Condition x (\S+) y did not hold(?: element-wise)?:?")
# "x (k:0) = " — the tensor name tells a boolean op's output (printed 0/1) from a count.
_TENSOR_LABEL = re.compile(r"^([xy]) \((.*)\) =$")
_BOOLEAN_OP = re.compile(r"(?:^|/)(?:Equal|NotEqual|Less|LessEqual|Greater|GreaterEqual|"
                         r"Logical(?:And|Or|Not)|All|Any|Is(?:Finite|Nan|Inf))(?:_\d+)?:\d+$")
# Eager tf.debugging.assert_*: "msg\nCondition x >= y did not hold.\nFirst 1 elements of x:\n[0]…"
_EAGER_ASSERT = re.compile(r"^(.*?)\n?Condition x (\S+) y did not hold\.?\s*\n"
                           r"(?:First \d+ elements of x:|x \(.*?\) =)\s*\n(.*?)\n"
                           r"(?:First \d+ elements of y:|y \(.*?\) =)\s*\n(.*?)$", re.DOTALL)


# A message of an export's own checks on a modality's content ("image: …"); in
# recommend_session that content is the input viewed_<modality>.
_MODALITY_PREFIX = re.compile(r"(\w+): ")


def first_line(exc: BaseException) -> str:
    """The readable part of a TF/libsndfile/Pillow message, without op names and device
    prefixes: the reason an error line quotes."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = re.sub((r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\].*"
                  r"|Error opening (<[^>]*>|'[^']*'):"
                  r"| ?<[\w.]+ object at 0x[0-9a-fA-F]+>"), "", text)  # Pillow names its BytesIO
    text = text.strip()
    return text.splitlines()[0] if text else type(exc).__name__


def name_viewed_input(message: str, inputs) -> str:
    """``message`` naming the input a request sent: ``recommend_session`` decodes its
    ``viewed_<modality>`` content with the modality's own checks, which say ``image: …``;
    the server (``serving.predict``) and ``ExportedModel`` both say ``viewed_image: …``."""
    match = _MODALITY_PREFIX.match(message)
    inputs = set(inputs)
    if match and match[1] not in inputs and f"viewed_{match[1]}" in inputs:
        return f"viewed_{message}"
    return message


def one_line_error(message: str) -> str:
    """One line for any error text a client sees — the one cleaner REST bodies, gRPC details,
    model status records and ``tfmmrec query`` all use.

    A failed graph assert (``assertion failed: [k must be >= 1] [Condition x >= y did not hold
    element-wise:] [x (k:0) = ] [0] [y (…) = ] [1]\n\t [[{{node …}}]]``) becomes its own message
    with the offending value: ``k must be >= 1 (got 0)``; ``tf.debugging.Assert`` data is
    appended (``user_id: batch larger than …=1024: 1025``) — also when TensorFlow frames the
    assert with ``{{function_node …}}``/``{{node …}}`` or a node name (a signature calling a
    nested ``tf.function`` does: ``serving_default``). Anything else keeps its first line,
    without TensorFlow's eager framing, ``{{function_node …}}`` prefix, ``[[{{node …}}]]``
    decorations or ``[Op:…]`` suffix.
    """
    text = _GRAPH_PREAMBLE.sub("", str(message))
    text = _FUNCTION_FRAMING.sub("", _ROOT_ERRORS.sub("", text)).strip()
    framed = _ASSERT.match(text)
    if framed:
        cleaned = _clean_assert(_NODE_DECORATION.sub("", text[framed.end():]))
        if cleaned:
            return cleaned
    eager = _EAGER_ASSERT.match(text)
    if eager:
        what, op, x, y = (part.strip() for part in eager.groups())
        return _condition_text(what, op, _unbracket(x), _unbracket(y), boolean=False)
    text = _NODE_DECORATION.sub("", text).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return _named_decoder_error(_OP_SUFFIX.sub("", first).strip())


# TensorFlow's decoders fail on corrupt or truncated files with messages that name neither the
# input nor what to send (``Invalid PNG data, size 100``; ``Invalid PNG. Failed to initialize
# decoder.``; DecodeWav's ``Data too short when trying to read string``, ``Bad number of
# channels for WAV: …``, ``WAV data chunk 'data' is too large: …``): these get the modality and
# the formats the export accepts. Bytes that are no image at all are named as they are.
_DECODER_ERRORS = (
    (re.compile(r"^Invalid (PNG|JPEG|GIF|BMP|WebP)\b|^Premature end of JPEG|^jpeg::|"
                r"^Failed to decode WebP|^Number of channels inherent in the image"), "image",
     "corrupt or truncated image ({}) - send complete JPEG, PNG, GIF, BMP or WebP bytes"),
    (re.compile(r"^Unknown image file format"), "image", "{}"),
    # Well-formed WAVs in an encoding DecodeWav does not read (8/24-bit, float, ADPCM, WAVEX).
    # (A format chunk of 20/40/50 bytes: IMA ADPCM, WAVE_FORMAT_EXTENSIBLE, MS ADPCM.)
    (re.compile(r"^Can only read \d+-bit WAV|^Bad audio format for WAV|"
                r"^Bad format chunk size for WAV: Expected 16 or 18, but got ?(20|40|50)$"),
     "audio", "unsupported WAV encoding ({}) - send 16-bit PCM WAV bytes (tfmmrec query "
     "--audio FILE converts other formats)"),
    (re.compile(r"^Data too short when trying to read|^Header mismatch|^Bad [\w ]+ (for WAV|"
                r"in WAV header)|^WAV (data chunk|contents)|^Can only read|^Can't have more "
                r"than"), "audio",
     "corrupt or truncated WAV ({}) - send complete 16-bit PCM WAV bytes"),
)


def _named_decoder_error(text: str) -> str:
    for pattern, modality, message in _DECODER_ERRORS:
        if pattern.search(text):
            return f"{modality}: {message.format(text)}"
    return text


def _clean_assert(data: str) -> str:
    """``[msg] [Condition …] [x (name) = ] [v] [y (name) = ] [w]`` or ``[msg] [v]…`` → one line."""
    items = _bracketed(data)
    if not items:
        return ""
    condition = next((i for i, item in enumerate(items) if _CONDITION.fullmatch(item)), None)
    if condition is None:  # tf.debugging.Assert(cond, [message, tensor, ...])
        return " ".join(_unbracket(item) if n else item for n, item in enumerate(items)
                        if item).strip()
    what = " ".join(items[:condition]).strip()
    op = _CONDITION.fullmatch(items[condition]).group(1)
    values: dict[str, str] = {}
    boolean = False
    rest = items[condition + 1:]
    for label, value in zip(rest[::2], rest[1::2], strict=False):
        match = _TENSOR_LABEL.match(label.strip())
        if match:
            values[match.group(1)] = _unbracket(value)
            boolean |= match.group(1) == "x" and bool(_BOOLEAN_OP.search(match.group(2)))
    return _condition_text(what, op, values.get("x", "?"), values.get("y", "?"), boolean)


def _condition_text(what: str, op: str, x: str, y: str, boolean: bool) -> str:
    if not what:
        return f"condition x {op} y did not hold (x = {x}, y = {y})"
    if boolean:  # x is a derived true/false: its 0/1 says nothing the message does not
        return what
    if op == "==":
        return f"{what} (got {x}, expected {y})"
    return f"{what} (got {x})"


def _bracketed(text: str) -> list[str]:
    """The top-level ``[...]`` groups of an assert's data, brackets removed (nesting kept)."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            if depth == 0:
                start = index + 1
            depth += 1
        elif char == "]" and depth:
            depth -= 1
            if depth == 0:
                items.append(" ".join(text[start:index].split()))
    return items


def _unbracket(value: str) -> str:
    """A printed tensor on one line: ``[0]`` or ``0`` → ``0``; ``8 102400`` → ``[8 102400]``."""
    value = " ".join(value.split())
    if value.startswith("[") and _bracketed(value) == [value[1:-1].strip()]:
        value = value[1:-1].strip()  # wrapped in one outer pair: take it off
    return value if " " not in value else f"[{value}]"


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80


def shown(value) -> str:
    """``repr(value)`` cut to about 80 characters: a value from a user's data in a message (a
    10 MB id in an interactions table made a 10 MB error line)."""
    return _SHOWN.repr(value)


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking the cut: the one length cap on the
    text of a value a message echoes (``shown`` for Python values, the serving module's
    ``short`` for a request's JSON)."""
    return text if len(text) <= limit else text[:limit] + "..."

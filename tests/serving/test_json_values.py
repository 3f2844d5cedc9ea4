"""REST bodies of millions of tiny JSON values are refused before ``json.loads`` builds them.

A 32 MiB body of ``[],`` passed the byte and nesting checks, and parsing it took the server's
peak RSS from ~1.2 GB to ~2.0 GB (+825 MiB, 26 times the body) before the 400. The pre-scan
that measures the nesting now counts the values too, against a limit derived from the served
export's own limits (``JsonValueLimit``), so the peak stays near the body itself.
"""

from __future__ import annotations

import codecs
import json

import pytest

from tests.serving.conftest import MODEL, install_version, rest_predict
from tests.serving.test_hostile import peak_rss_mib_of, rest_raw
from tfmmrec.config import ExportConfig, ServingLimitsConfig
from tfmmrec.serving.json_tensor import (
    DEFAULT_JSON_VALUE_LIMIT,
    MAX_JSON_DEPTH,
    JsonValueLimit,
    _scan,
    loads,
)
from tfmmrec.serving.limits import DEFAULT_MAX_REQUEST_BYTES
from tfmmrec.serving.registry import ServedModel
from tfmmrec.serving.server import ModelServer, ServerOptions
from tfmmrec.serving.status import RequestStatus

BODY_BYTES = 32 * 2**20
MODALITIES = ("text", "image", "audio", "facets")  # recommend_session's viewed_<m> inputs


def json_values(value) -> int:
    """The values of a parsed document: itself, array elements and object members, nested."""
    if isinstance(value, list):
        return 1 + sum(map(json_values, value))
    if isinstance(value, dict):
        return 1 + sum(map(json_values, value.values()))
    return 1


def tiny_values_body(size: int = BODY_BYTES) -> bytes:
    """``{"inputs": {"user_id": [[], [], ...]}}`` of ``size`` bytes: 3 bytes a value."""
    head, tail = b'{"inputs": {"user_id": [', b"[]]}}"
    return head + b"[]," * ((size - len(head) - len(tail)) // 3) + tail


def largest_session_request(limit: JsonValueLimit, rows: str = "columnar",
                            modalities: tuple[str, ...] = MODALITIES) -> dict:
    """A full batch of ``recommend_session`` rows, each with a full session, full exclusions
    and every viewed_<modality> input (binary ones as ``{"b64"}``): the most values a request
    the export accepts can hold."""
    batch = limit.max_batch_size
    sessions = [[f"i{j:04d}" for j in range(limit.max_session_items)]] * batch
    exclusions = [[f"i{j:04d}" for j in range(limit.max_exclude)]] * batch
    users = [f"u{i:04d}" for i in range(batch)]
    viewed = {f"viewed_{m}": [{"b64": ""} if m in ("image", "audio") else ""] * batch
              for m in modalities}
    if rows == "columnar":
        return {"signature_name": "recommend_session", "inputs": {
            "session_item_ids": sessions, "user_id": users, "k": 3,
            "exclude_item_ids": exclusions, **viewed}}
    return {"signature_name": "recommend_session", "instances": [
        {"session_item_ids": sessions[i], "user_id": users[i], "exclude_item_ids": exclusions[i],
         **{name: values[i] for name, values in viewed.items()}} for i in range(batch)]}


# -- the scan ----------------------------------------------------------------------------------
DOCUMENTS = [
    b"{}", b"[]", b"[[]]", b"[null]", b"[ ]", b"[1]", b"[1, 2.5e3, -3, true, false, null]",
    b'{"a": 1}', b'{"a": "b", "c": ["d", "e"]}', b'{"a":{},"b":[],"c":[[],[[]],{}]}',
    b'["a,b", "[x]", "{y}", "\\"q\\"", "\\\\", "\\u00e9\\n", ""]', b'["", "", ""]',
    b'{"k" : "v" , "l" :[ 1 ,"x" , { } ] }', b' \n[\t"a"\r\n,\n"b"\n] \n', b'"lone string"',
    b"12345", b'[{"b64": "AAAA"}, {"b64": ""}]', b'{"inputs": {"user_id": [[], [], []]}}',
    '["é", "€", "😀", {"ключ": "значение"}]'.encode(),
]


@pytest.mark.parametrize("body", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_the_scan_counts_every_value_of_a_document_exactly(body):
    deepest, values = _scan(body, max_values=10**9)
    assert values == json_values(json.loads(body))
    assert deepest <= MAX_JSON_DEPTH


@pytest.mark.parametrize("rows", ["columnar", "row"])
def test_the_largest_request_an_export_accepts_is_within_the_limit(rows):
    """The default limit is the export's largest legitimate request, with little to spare."""
    limit = JsonValueLimit()
    assert limit == DEFAULT_JSON_VALUE_LIMIT
    assert (limit.max_batch_size, limit.max_session_items, limit.max_exclude) == (
        ServingLimitsConfig().max_batch_size, ExportConfig().max_session_items,
        ExportConfig().max_exclude)
    body = json.dumps(largest_session_request(limit, rows)).encode()
    values = json_values(json.loads(body))
    assert _scan(body, limit.values) == (4, values)
    assert 0.85 * limit.values < values <= limit.values
    assert json_values(loads(body)) == values


def test_the_limit_follows_the_export_metadata():
    metadata = {"limits": {"max_batch_size": 10}, "max_session_items": 5, "max_exclude": 2}
    limit = JsonValueLimit.of_export(metadata)
    assert limit.values == 10 * (5 + 2 + JsonValueLimit.ROW_EXTRA)
    assert str(limit) == ("export.limits.max_batch_size=10 rows × (export.max_session_items=5 + "
                          f"export.max_exclude=2 + {JsonValueLimit.ROW_EXTRA}) values per row")
    # A SavedModel without tfmmrec metadata, or with malformed entries: the defaults.
    assert JsonValueLimit.of_export({}) == DEFAULT_JSON_VALUE_LIMIT
    assert JsonValueLimit.of_export({"limits": [], "max_exclude": "x",
                                     "max_session_items": True}) == DEFAULT_JSON_VALUE_LIMIT


SMALL = JsonValueLimit(max_batch_size=1, max_session_items=0, max_exclude=0)  # 32 values


@pytest.mark.parametrize("element", [b'"u1"', b"[]", b"{}", b"7", b'"\\u00e9"', b"[1]"],
                         ids=["id", "empty_array", "empty_object", "number", "escaped", "nested"])
def test_a_document_over_the_limit_is_refused_before_parsing(element):
    def document(count: int) -> bytes:  # {"inputs": [element × count]}
        return b'{"inputs": [' + b", ".join([element] * count) + b"]}"

    per_element = json_values(json.loads(element))
    fits = (SMALL.values - 2) // per_element  # the document and its "inputs" array: 2 values
    assert json_values(loads(document(fits), SMALL)) <= SMALL.values
    with pytest.raises(RequestStatus) as refused:
        loads(document(fits + 1), SMALL)
    assert refused.value.http_status == 400
    assert str(refused.value) == (
        f"JSON Parse error: more than {SMALL.values} JSON values (array elements and object "
        f"members), over the limit of {SMALL.values}: {SMALL}; send fewer rows per request")


def test_a_byte_order_mark_does_not_hide_a_document_from_the_limit():
    """A UTF-8 mark ended the scan at its first byte (a "scalar document" of one value) while
    ``json.loads`` decoded it and built the whole body: +1 GB for a 32 MiB body."""
    over = b'{"inputs": [' + b", ".join([b"[]"] * SMALL.values) + b"]}"
    with pytest.raises(RequestStatus, match=f"more than {SMALL.values} JSON values"):
        loads(codecs.BOM_UTF8 + over, SMALL)
    assert loads(codecs.BOM_UTF8 + b'{"inputs": ["u1"]}', SMALL) == {"inputs": ["u1"]}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32-be"])
def test_a_body_in_a_wider_encoding_is_refused_before_parsing(encoding):
    body = json.dumps({"inputs": [[]] * (SMALL.values * 2)}).encode(encoding)
    with pytest.raises(RequestStatus) as refused:
        loads(body, SMALL)
    assert refused.value.http_status == 400
    assert str(refused.value) == (f"JSON Parse error: the body is {encoding.upper()}; send "
                                  "UTF-8 JSON")


@pytest.mark.parametrize("body", [
    b"[" + b"1" * 100_000 + b"]", b"[" + b":" * 100_000 + b"]", b"[" + b" " * 100_000,
    b'["' + b"a" * 100_000, b'["' + b'\\"' * 50_000, b"[" + b"[]" * 50_000 + b"]",
    b'{"a":"b":"c":"d"}' * 10_000, b'"a" ' * 30_000, b"[1 2 3 4]" * 10_000,
], ids=["long_number", "colons", "spaces", "unterminated", "escaped_quotes", "no_commas",
        "keys_in_a_row", "strings_in_a_row", "scalars_in_a_row"])
def test_malformed_bodies_are_a_parse_error_not_a_crash(body):
    with pytest.raises(RequestStatus, match="JSON Parse error") as refused:
        loads(body, SMALL)
    assert refused.value.http_status == 400


# -- the server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_server(tiny_exports, tmp_path_factory):
    """The BruteForce export behind the default 64 MiB body limit (the session's server has a
    1 MiB one), REST on, warmup off."""
    base = tmp_path_factory.mktemp("json-values")
    install_version(tiny_exports.brute_force, base / MODEL, 1)
    options = ServerOptions(port=0, rest_port=0, num_threads=2, poll_seconds=0, warmup=False)
    assert options.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES >= BODY_BYTES
    with ModelServer([ServedModel(MODEL, base / MODEL)], options) as running:
        yield running


@pytest.fixture(scope="module")
def served_limit(default_server) -> JsonValueLimit:
    """The limit of the served version, from its export metadata (the tiny export: defaults)."""
    with default_server.registry.handle(MODEL) as servable:
        return JsonValueLimit.of_export(servable.metadata)


def test_millions_of_tiny_values_are_a_400_with_bounded_peak_memory(default_server,
                                                                   served_limit, tiny_exports):
    """The reviewer's body: 32 MiB of ``[],`` (11 million empty lists). The peak RSS while the
    server reads and refuses it stays below 4 times the body (parsing it took 26 times)."""
    body = tiny_values_body()
    answer = {}

    def post():
        answer["status"], answer["payload"] = rest_raw(default_server, body)

    peak = peak_rss_mib_of(post)
    assert answer["status"] == 400, answer["payload"]
    assert peak < 4 * BODY_BYTES / 2**20, f"peak RSS grew {peak:.0f} MiB for a 32 MiB body"
    assert answer["payload"]["error"] == (
        f"JSON Parse error: more than {served_limit.values} JSON values (array elements and "
        f"object members), over the limit of {served_limit.values}: {served_limit}; send fewer "
        "rows per request")
    assert f"export.limits.max_batch_size={served_limit.max_batch_size} rows" in (
        answer["payload"]["error"])
    status, payload = rest_predict(default_server,
                                   {"inputs": {"user_id": tiny_exports.user_ids[:1]}})
    assert status == 200, payload


def test_the_largest_legitimate_request_is_still_answered(default_server, served_limit):
    """A full batch of sessions with full exclusions (1.3 MB of JSON) is scanned and served
    (the tiny model has no facets tower: no viewed_facets)."""
    document = largest_session_request(served_limit, modalities=("text", "image", "audio"))
    body = json.dumps(document).encode()
    assert json_values(document) > 0.8 * served_limit.values
    status, payload = rest_raw(default_server, body)
    assert status == 200, payload
    assert len(payload["outputs"]["item_ids"]) == served_limit.max_batch_size

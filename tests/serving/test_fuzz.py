"""Property-based tests (hypothesis) of both protocols: whatever a client sends, never a 5xx, never a stall.

REST: random JSON bodies in and around TF Serving's two forms (any unicode, lone
surrogates included; wrong types, ragged and deep lists, huge numbers), and random bytes.
gRPC: random PredictRequests (dtypes, declared shapes against the values actually sent,
tensor_content of any length, bogus dtype enums, unknown inputs).
After every example the server must still answer a normal request.

Examples are bounded (``TFREC_FUZZ_EXAMPLES``, default 120 per test) and derandomized, so the
suite stays fast and repeatable; to fuzz for real, raise the number and set ``TFREC_FUZZ_RANDOM=1``.
"""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from tests.helpers.servers import MAX_BATCH, http, running_server

EXAMPLES = int(os.environ.get("TFREC_FUZZ_EXAMPLES", "120"))
STALL_S = 5.0  # no answer may take longer (the tiny model answers in milliseconds)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("TFREC_FUZZ_RANDOM", "") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.FAILED_PRECONDITION}


@pytest.fixture(scope="module")
def server(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}, poll_wait_s=1.0, max_batch_size=MAX_BATCH,
                        max_exclusions=16, max_request_bytes=1 << 20) as s:
        yield s


def assert_healthy(server) -> None:
    status, body = http(server.rest_port, "/v1/models/tiny:predict", {"instances": ["healthy?"]}, timeout=STALL_S)
    assert status == 200 and len(body["predictions"][0]["item_ids"]) == 5, body


# ----------------------------------------------------------------------------- REST
text = st.text(st.characters(), max_size=12) | st.sampled_from(["\ud800", "a\udfff", "\ud83d", "", "item_01"])
leaf = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | text | \
    st.fixed_dictionaries({"b64": text})
value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=3),
                     max_leaves=40)
names = st.sampled_from(["query_text", "exclude_item_ids", "item_id", "item_text", "scale", "foo"]) | text
instance = st.dictionaries(names, value, max_size=3) | value
utf8 = st.text(st.characters(codec="utf-8"), max_size=12)
exclusions = st.lists(utf8, max_size=20) | st.lists(text | st.integers(), max_size=20)  # around --max_exclusions 16
row = st.fixed_dictionaries({"query_text": utf8 | text}, optional={"exclude_item_ids": exclusions | value})
body = st.fixed_dictionaries(
    {}, optional={"signature_name": st.sampled_from(["", "retrieve", "embed_query", "embed_item",
                                                     "scaled_embed_query", "nope"]) | value,
                  "instances": st.lists(row, min_size=1, max_size=MAX_BATCH + 2) |
                  st.lists(row | instance, max_size=MAX_BATCH + 2) | value,
                  "inputs": st.dictionaries(names, value, max_size=3) | value})


near_valid_body = st.fixed_dictionaries({"instances": st.lists(row, min_size=1, max_size=MAX_BATCH + 1)}) | \
    st.fixed_dictionaries({"inputs": st.fixed_dictionaries({"query_text": st.lists(utf8, max_size=MAX_BATCH + 1)},
                                                           optional={"exclude_item_ids": st.lists(exclusions)})})


@FUZZ
@given(body=near_valid_body | body, mangle=st.sampled_from(["", "nan", "inf", "truncate"]))
def test_rest_predict_never_5xx_nor_stalls(server, body, mangle):
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes
    if mangle == "nan":
        raw = raw.replace(b"1", b"NaN", 1)
    elif mangle == "inf":
        raw = raw.replace(b"0", b"-Infinity", 1)
    elif mangle == "truncate":
        raw = raw[: len(raw) // 2]
    start = time.monotonic()
    status, answer = http(server.rest_port, "/v1/models/tiny:predict", raw=raw, method="POST", timeout=STALL_S)
    assert status < 500, (status, answer, raw[:300])
    assert time.monotonic() - start < STALL_S
    event(f"HTTP {status}")
    if status != 200:
        assert isinstance(answer, dict) and "\n" not in answer["error"], answer
    assert_healthy(server)


@FUZZ
@given(raw=st.binary(max_size=200), path=st.sampled_from(["tiny:predict", "tiny/versions/1:predict", "tiny"]))
def test_rest_random_bytes_never_5xx(server, raw, path):
    status, _ = http(server.rest_port, f"/v1/models/{path}", raw=raw, method="POST", timeout=STALL_S)
    assert status < 500
    assert_healthy(server)


# ----------------------------------------------------------------------------- gRPC
dtypes = st.sampled_from([types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_INT32, types_pb2.DT_INT64,
                          types_pb2.DT_BOOL, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_COMPLEX64,
                          types_pb2.DT_INVALID, types_pb2.DT_RESOURCE, 999])
dims = st.lists(st.sampled_from([-1, 0, 1, 2, 3, MAX_BATCH + 1, 17, 1000, 1 << 21, 1 << 40]), max_size=3)


@st.composite
def tensor_protos(draw) -> tensor_pb2.TensorProto:
    """A TensorProto whose declared shape, dtype and values need not agree."""
    proto = tensor_pb2.TensorProto(dtype=draw(dtypes))
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in draw(dims)],
        unknown_rank=draw(st.booleans()) and draw(st.booleans())))
    kind = draw(st.sampled_from(["string", "float", "int", "int64", "bool", "content", "none"]))
    n = draw(st.integers(0, 6))
    if kind == "string":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=8) | st.just(b"item_01"), min_size=n, max_size=n)))
    elif kind == "float":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), min_size=n, max_size=n)))
    elif kind == "int":
        proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=n, max_size=n)))
    elif kind == "int64":
        proto.int64_val.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)))
    elif kind == "bool":
        proto.bool_val.extend(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    elif kind == "content":
        proto.tensor_content = draw(st.binary(max_size=64))
    return proto


@st.composite
def near_valid_inputs(draw) -> dict[str, tensor_pb2.TensorProto]:
    """query_text [b] and exclude_item_ids [b, e] as a client would send them, declared sizes a little off."""
    rows, width = draw(st.integers(0, MAX_BATCH + 1)), draw(st.integers(0, 18))
    off = draw(st.sampled_from([0, 0, 0, 1, -1]))
    query = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"q"] * max(0, rows + off))
    query.tensor_shape.dim.add().size = rows
    exclude = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=draw(st.lists(
        st.binary(max_size=6) | st.just(b"item_01"), min_size=rows * width, max_size=rows * width)))
    for size in (rows, width + draw(st.sampled_from([0, 0, 1]))):
        exclude.tensor_shape.dim.add().size = size
    return {"query_text": query, "exclude_item_ids": exclude} if draw(st.booleans()) else {"query_text": query}


@FUZZ
@given(inputs=st.dictionaries(st.sampled_from(["query_text", "exclude_item_ids", "scale", "item_id", "x"]),
                              tensor_protos(), max_size=3) | near_valid_inputs(),
       signature=st.sampled_from(["", "retrieve", "embed_query", "embed_item", "scaled_embed_query"]),
       version=st.sampled_from([None, 1, 2]))
def test_grpc_predict_never_internal_nor_stalls(server, stub, inputs, signature, version):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    start = time.monotonic()
    try:
        stub.Predict(request, timeout=STALL_S)
        event("OK")
    except grpc.RpcError as e:
        event(e.code().name)
        assert e.code() in CLIENT_CODES, (e.code(), e.details(), request)
        assert "\n" not in e.details()
    assert time.monotonic() - start < STALL_S
    assert_healthy(server)


# ----------------------------------------------------------------------------- the REST fast path
@pytest.fixture(scope="module")
def retrieve_signature(tiny_export):
    import tensorflow as tf

    from serving.signatures import Signature

    return Signature("serving_default", tf.saved_model.load(str(tiny_export / "tiny" / "1")).signatures["retrieve"])


@FUZZ
@given(body=near_valid_body | body)
def test_fast_rest_decoding_equals_parse_json(retrieve_signature, body):
    """Where ``decode_common`` takes a body, its arrays are exactly those of ``Signature.parse_json``."""
    from serving.limits import Limits
    from serving.rest_decoding import decode_common
    from serving.signatures import RequestError

    limits = Limits(max_batch_size=MAX_BATCH, max_exclusions=16)
    try:
        fast = decode_common(body, retrieve_signature, limits)
    except RequestError as e:
        event("fast path refused")
        fast = e
    try:
        slow = retrieve_signature.parse_json(body, MAX_BATCH)
    except (RequestError, UnicodeEncodeError) as e:  # parse_json leaves surrogates to check_json_body
        slow = e if isinstance(e, RequestError) else RequestError("not valid UTF-8")
    if fast is None:
        event("general path")
        return
    if isinstance(fast, RequestError):  # a limit (the slow path has none but the batch size), bad text, or the same
        assert "--max_exclusions" in fast.message or "--max_batch_size" in fast.message or \
            "UTF-8" in fast.message or fast.message == getattr(slow, "message", None), (fast.message, slow)
        return
    event("fast path")
    assert not isinstance(slow, RequestError), (slow.message, body)
    (arrays, rows, form), (want, want_rows, want_form) = fast, slow
    assert (rows, form, sorted(arrays)) == (want_rows, want_form, sorted(want))
    for n in want:
        assert arrays[n].dtype == want[n].dtype and arrays[n].shape == want[n].shape, n
        assert arrays[n].tolist() == want[n].tolist(), n

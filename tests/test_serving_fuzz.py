"""Property tests against a live albert-serve on loopback (issue 20 item 8; hypothesis, derandomized, bounded):
random request bodies (bytes, JSON of any shape, HF-shaped bodies with random inputs and parameters), random
headers and random KServe v2 tensors. Each gets a 200 whose answer is in-process pipeline()'s, or a 4xx whose
body is one JSON {"error": one line}; never a 500, and the server stays healthy."""
from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import pipeline
from tests.test_runtime_fuzz import json_values
from tests.test_serving import albert_serve, same

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 40)), deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CLIENT_ERRORS = {400, 404, 405, 408, 411, 413, 415, 422, 431}
PARAMETERS = ("top_k", "targets", "tokenizer_kwargs", "truncation", "max_length", "padding", "function_to_apply")


@pytest.fixture(scope="module")
def served(handmade_bundle):
    bundle = handmade_bundle("fill-mask")
    with albert_serve(bundle) as (url, process):
        with httpx.Client(base_url=url, trust_env=False, timeout=60) as client:
            yield client, pipeline(bundle), process


def check_answer(response: httpx.Response, expected=None) -> None:
    """A 200 (equal to `expected()` when given) or a client error with one JSON line; never a 5xx."""
    assert response.status_code == 200 or response.status_code in CLIENT_ERRORS, (response.status_code,
                                                                                   response.text)
    if response.status_code != 200:
        body = response.json()
        assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"], body
        assert "Traceback" not in body["error"]
    elif expected is not None:
        assert response.json() == same(expected())


def in_process(pipe, inputs, parameters):
    def answer():
        return pipe(inputs, **parameters)
    return answer


texts = st.text(max_size=40) | st.text(max_size=30).map(lambda t: t + " [MASK]")
hf_bodies = st.fixed_dictionaries(
    {"inputs": texts | st.lists(texts, max_size=3) | json_values},
    optional={"parameters": st.dictionaries(st.sampled_from(PARAMETERS), json_values, max_size=3) | json_values})


@FUZZ
@given(body=hf_bodies)
def test_hf_shaped_bodies_get_the_pipelines_answer_or_one_error_line(served, body):
    client, pipe, _ = served
    response = client.post("/models/fill-mask", content=json.dumps(body).encode())
    parameters = body.get("parameters")
    expected = None
    if response.status_code == 200 and isinstance(parameters, (dict, type(None))):
        expected = in_process(pipe, body["inputs"], parameters or {})
    check_answer(response, expected)


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_body_bytes_get_an_answer_or_one_error_line(served, raw):
    client, _, _ = served
    check_answer(client.post("/models/fill-mask", content=raw))


header_names = st.from_regex(r"\Ax-[a-z0-9-]{1,20}\Z")
# printable ASCII without edge spaces: the values an HTTP client sends (h11 refuses to send the others)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=200).map(str.strip)


@FUZZ
@given(headers=st.dictionaries(header_names, header_values, max_size=5),
       content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]))
def test_random_headers_change_nothing(served, headers, content_type):
    client, pipe, _ = served
    seed = "Plants create [MASK] through photosynthesis."
    response = client.post("/models/fill-mask", content=json.dumps({"inputs": seed}).encode(),
                           headers={**headers, **({"content-type": content_type} if content_type else {})})
    check_answer(response, in_process(pipe, seed, {}))


V2_NAMES = ("input_ids", "attention_mask", "token_type_ids")
v2_tensor = st.fixed_dictionaries({
    "name": st.sampled_from(V2_NAMES) | st.text(max_size=8),
    "shape": st.lists(st.integers(-2, 40), min_size=0, max_size=3) | json_values,
    "datatype": st.sampled_from(["INT64", "INT32", "FP32", "BOOL", "BYTES", "int64"]),
    "data": st.lists(st.integers(-5, 2000) | st.floats(allow_nan=True) | st.booleans(), max_size=64) | json_values,
})


@st.composite
def v2_bodies(draw):
    if draw(st.booleans()):  # well-formed: 3 tensors of one shape, values maybe out of range
        rows, length = draw(st.integers(1, 3)), draw(st.integers(1, 140))
        values = st.integers(-3, 1100)
        return {"inputs": [{"name": name, "shape": [rows, length], "datatype": "INT64",
                            "data": draw(st.lists(values, min_size=rows * length, max_size=rows * length))}
                           for name in V2_NAMES]}
    return {"inputs": draw(st.lists(v2_tensor, max_size=4)), **draw(st.dictionaries(
        st.sampled_from(["outputs", "parameters", "id"]), json_values, max_size=2))}


@FUZZ
@given(body=v2_bodies())
def test_v2_tensors_get_the_backends_outputs_or_one_error_line(served, body):
    client, pipe, _ = served
    response = client.post("/v2/models/fill-mask/infer", content=json.dumps(body).encode())
    check_answer(response)
    if response.status_code == 200:
        feeds = {t["name"]: np.array(t["data"], dtype=np.int64).reshape(t["shape"]) for t in body["inputs"]}
        expected = pipe.backend.infer(feeds)
        for output in response.json()["outputs"]:
            assert np.array_equal(np.array(output["data"], dtype=np.float32).reshape(output["shape"]),
                                  expected[output["name"]])


def test_the_server_is_healthy_after_the_fuzz(served):
    client, _, process = served
    assert client.get("/health").status_code == 200 and process.poll() is None

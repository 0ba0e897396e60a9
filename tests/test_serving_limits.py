"""albert-serve's bounds: option ranges, raw tensors out of range, answers over their size, usage lines, the
serve extra missing, internal errors named as such, shutdown within its timeout."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from runtime import __version__
from tests.test_serving import ROOT, SEED, SLOWER, albert_serve, metric, post, run_cli, slow_site  # noqa: F401



@pytest.fixture(scope="module")
def fill_mask(handmade_bundle):
    return handmade_bundle("fill-mask")


@pytest.fixture(scope="module")
def server(fill_mask):
    with albert_serve(fill_mask) as (url, process):
        yield url, process


@pytest.mark.parametrize("option, value, reason", [
    ("--max-delay-ms", "inf", "must be a finite number from 0 to 60000 (one minute), got 'inf'"),
    ("--timeout-s", "nan", "must be a finite number from 0.001 to 86400 (one day), got 'nan'"),
    ("--port", "99999", "must be an integer from 0 to 65535, got '99999'"),
    ("--threads", "1000000", f"must be an integer from 1 to {len(os.sched_getaffinity(0))} (the CPUs this process "
                             "may use), got '1000000'"),
    ("--threads", "1.5", f"must be an integer from 1 to {len(os.sched_getaffinity(0))} (the CPUs this process may "
                         "use), got '1.5'"),
    ("--max-batch-size", "-3", "must be an integer from 1 to 4096, got '-3'"),
    ("--max-batch-tokens", "0", "must be an integer from 1 to 16777216, got '0'"),
    ("--read-timeout-s", "0", "must be a finite number from 0.01 to 3600 (one hour), got '0'"),
    ("--workers", "true", "must be an integer from 1 to 64, got 'true'"),
])
def test_numeric_options_out_of_range_are_one_usage_line(fill_mask, option, value, reason):
    result = run_cli(fill_mask, option, value)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"albert-serve: error: argument {option}: {reason} (see albert-serve --help)\n"


def test_usage_errors_are_one_line_and_version_prints(fill_mask):
    unknown = run_cli(fill_mask, "--no-such-flag")
    assert unknown.returncode == 2
    assert unknown.stderr == "albert-serve: error: unrecognized arguments: --no-such-flag (see albert-serve --help)\n"
    nothing = run_cli()
    assert nothing.returncode == 2 and nothing.stderr.count("\n") == 1
    assert nothing.stderr.startswith("albert-serve: error: the following arguments are required: BUNDLE")
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout == f"albert-serve {__version__}\n"


def test_without_the_serve_extra_one_line_names_it(fill_mask, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'starlette':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Missing())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run([sys.executable, "-m", "serving.cli", str(fill_mask), "--port", "0"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert result.stderr == ("albert-serve: error: starlette is not installed; albert-serve needs it: "
                             "pip install 'albert-export[serve]'\n")


def v2_body(shape=(1, 5), **data):
    arrays = {"input_ids": np.full(shape, 7), "attention_mask": np.ones(shape, dtype=np.int64),
              "token_type_ids": np.zeros(shape, dtype=np.int64)}
    inputs = [{"name": n, "shape": list(shape), "datatype": "INT64",
               "data": data.get(n, a.ravel().tolist())} for n, a in arrays.items()]
    return {"inputs": inputs}


@pytest.mark.parametrize("body, message", [
    (v2_body(token_type_ids=[-1, 0, 0, 0, 0]), "input token_type_ids holds -1 at [0, 0]; it takes 0 to 1 (config.json type_vocab_size 2)"),
    (v2_body(token_type_ids=[5, 0, 0, 0, 0]), "input token_type_ids holds 5 at [0, 0]; it takes 0 to 1 (config.json type_vocab_size 2)"),
    (v2_body(input_ids=[2**70, 0, 0, 0, 0]), "input input_ids is INT64: its data must be integers within"),
    (v2_body(input_ids=[1.5, 0, 0, 0, 0]), "input input_ids is INT64: its data must be integers within"),
    (v2_body(attention_mask=[7, 1, 1, 1, 1]), "input attention_mask holds 7 at [0, 0]; it takes 0 (padding) or 1 (a token)"),
    (v2_body(shape=(1, 129)), ("input input_ids has 129 positions; the model has 128 (config.json max_position_embeddings): "
                              "cut the input to that length")),
    ({**v2_body(), "outputs": "logits"}, 'outputs is a list of {"name": ...} objects, one per output wanted'),
    ({**v2_body(), "outputs": [{"name": "hidden"}]}, "model has no output(s) 'hidden'; it has logits"),
])
def test_v2_tensors_out_of_range_are_a_422_naming_the_tensor_before_the_model_runs(server, body, message):
    url, process = server
    before = httpx.get(url + "/metrics", trust_env=False).text
    response = post(url, "/v2/models/fill-mask/infer", body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(message), response.json()
    after = httpx.get(url + "/metrics", trust_env=False).text
    assert metric(after, "albert_serve_requests_total", status="500") == metric(before, "albert_serve_requests_total",
                                                                                status="500")
    good = post(url, "/v2/models/fill-mask/infer", v2_body())
    assert good.status_code == 200 and good.json()["outputs"][0]["shape"] == [1, 5, 1004]


def test_v2_answer_over_the_response_limit_is_refused_before_running(fill_mask):
    with albert_serve(fill_mask, args=["--max-response-bytes", "1000000"]) as (url, _):
        response = post(url, "/v2/models/fill-mask/infer", v2_body(shape=(8, 128)))
        assert response.status_code == 413
        assert response.json() == {"error": "outputs logits for inputs of shape [8, 128] would take about 25702400 "
                                            "bytes; this server sends at most 1000000 (--max-response-bytes); send "
                                            "fewer rows or ask for fewer outputs"}
        small = post(url, "/v2/models/fill-mask/infer", v2_body(shape=(1, 8)))
        assert small.status_code == 200 and len(small.content) < 1000000
        metrics = httpx.get(url + "/metrics", trust_env=False).text
        assert metric(metrics, "albert_serve_requests_total", route="/v2/models/infer", status="413") == 1
        many = post(url, "/models/fill-mask", {"inputs": ["[MASK] " * 40] * 8, "parameters": {"top_k": 1000}})
        assert many.status_code == 413
        assert many.json() == {"error": "this request asks for over 10000 answers (--max-answers; fill-mask: masks x "
                                        "top_k); ask for a smaller top_k or fewer masks"}
        large = post(url, "/models/fill-mask", {"inputs": ["word " * 30 + "[MASK]"] * 20, "parameters": {"top_k": 200}})
        assert large.status_code == 413
        assert large.json() == {"error": "the answer would take over 1000000 bytes (--max-response-bytes; each "
                                         "fill-mask proposal repeats the text); ask for a smaller top_k or send "
                                         "shorter texts"}
        metrics = httpx.get(url + "/metrics", trust_env=False).text
        assert metric(metrics, "albert_serve_batch_size_count", model="fill-mask") == 0  # refused before running


def test_v2_calls_count_in_the_queue(fill_mask, slow_site):
    import asyncio

    args = ["--max-queue", "1", "--max-batch-size", "1", "--shutdown-timeout-s", "1", "--workers", "1"]  # a queue each
    with albert_serve(fill_mask, args=args, site=slow_site) as (url, _):
        async def scenario():
            async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
                slow = asyncio.create_task(http.post(url + "/models/fill-mask", json={"inputs": SLOWER}))
                await asyncio.sleep(1.0)  # the slow call runs on the model's thread
                queued = asyncio.create_task(http.post(url + "/models/fill-mask", json={"inputs": SEED}))
                await asyncio.sleep(0.5)  # and this one waits in the queue, which is then full
                v2 = await http.post(url + "/v2/models/fill-mask/infer", json=v2_body())
                slow.cancel()
                queued.cancel()
                return v2

        v2 = asyncio.run(scenario())
    assert v2.status_code == 503 and v2.headers["retry-after"] == "1"
    assert v2.json() == {"error": "model fill-mask is overloaded (the queue holds 1 requests); retry after a second"}


def test_deeply_nested_json_is_a_400(server):
    url, _ = server
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = httpx.post(url + "/models/fill-mask", content=body, trust_env=False, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": "the request body nests JSON arrays or objects too deeply to read"}


def test_an_internal_error_is_a_500_that_names_itself(fill_mask, slow_site):
    with albert_serve(fill_mask, site=slow_site) as (url, _):
        response = post(url, "/models/fill-mask", {"inputs": "internal bug [MASK]"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error (ValueError: a bug in the server's own code); please "
                                            "report it"}
        bad = post(url, "/models/fill-mask", {"inputs": "no mask"})
        assert bad.status_code == 400 and bad.json()["error"].startswith("No mask_token")


def test_sigterm_with_a_long_batch_exits_within_the_shutdown_timeout(fill_mask, slow_site):
    """A batch that takes 30 s runs when SIGTERM comes with --shutdown-timeout-s 1: its request gets one JSON 503,
    the process exits 0 within a few seconds, no traceback is logged."""
    import asyncio

    with albert_serve(fill_mask, args=["--shutdown-timeout-s", "1"], site=slow_site) as (url, process):
        async def scenario():
            async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
                slow = asyncio.create_task(http.post(url + "/models/fill-mask", json={"inputs": SLOWER}))
                await asyncio.sleep(1.0)
                process.send_signal(signal.SIGTERM)
                started = time.monotonic()
                response = await slow
                return response, started

        response, started = asyncio.run(scenario())
        assert process.wait(10) == 0
        exited = time.monotonic() - started
        log = process.stderr.read()
    assert response.status_code == 503 and response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "the server is shutting down and could not finish this request in time; "
                                        "retry on another replica"}
    assert exited < 5, exited
    assert "Traceback" not in log and len(log) < 2000, log

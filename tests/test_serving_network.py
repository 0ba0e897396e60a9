"""albert-serve's connections: keep-alive answers without Nagle's delay, slow and stalled clients bounded."""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.test_serving import ROOT, SEED, albert_serve

# albert-serve as the [serve] extra installs it: uvicorn without uvloop (uvloop sets TCP_NODELAY on every TCP socket
# by itself, asyncio only on sockets whose proto is IPPROTO_TCP)
PLAIN_UVICORN = """
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "uvloop":
            raise ImportError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture(scope="module")
def fill_mask(handmade_bundle):
    return handmade_bundle("fill-mask")


@pytest.fixture(scope="module")
def plain_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("plain-uvicorn")
    (site / "sitecustomize.py").write_text(PLAIN_UVICORN)
    return site


def test_one_keep_alive_client_is_not_held_by_delayed_acks(fill_mask, plain_site):
    """TCP_NODELAY on accepted sockets: with Nagle on, each keep-alive answer (headers, then body: two writes)
    waits for the client's delayed ACK, ~40 ms; the median of 35 answers on one connection is far below it (a
    model answer costs ~10 ms of CPU here, so the bound is taken on /health/live: load on the machine cannot
    push it past 20 ms, the delayed ACK always does)."""
    with albert_serve(fill_mask, site=plain_site) as (url, _):
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
            assert http.post("/models/fill-mask", json={"inputs": SEED}).status_code == 200
            seconds = []
            for _ in range(40):
                started = time.perf_counter()
                assert http.get("/health/live").status_code == 200
                seconds.append(time.perf_counter() - started)
            assert statistics.median(seconds[5:]) < 0.02, sorted(seconds)


def read_all(sock, limit=5.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_stalled_headers_and_bodies_get_a_408_and_good_requests_are_served_meanwhile(fill_mask):
    import json
    import socket

    with albert_serve(fill_mask, args=["--read-timeout-s", "0.5"]) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        silent, partial, body = (socket.create_connection((host, int(port))) for _ in range(3))
        partial.sendall(b"POST /models/fill-mask HTTP/1.1\r\nHost: x\r\n")
        body.sendall(b"POST /models/fill-mask HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        good = httpx.post(url + "/models/fill-mask", json={"inputs": SEED}, trust_env=False, timeout=30)
        assert good.status_code == 200
        started = time.monotonic()
        answers = [read_all(s) for s in (silent, partial, body)]
        assert time.monotonic() - started < 3
        for sock in (silent, partial, body):
            sock.close()
    heads = [a.split(b"\r\n\r\n", 1) for a in answers]
    assert [h[0].split(b"\r\n")[0] for h in heads] == [b"HTTP/1.1 408 Request Timeout"] * 3
    assert json.loads(heads[0][1]) == json.loads(heads[1][1]) == {
        "error": "the request line and headers did not arrive within 0.5 s (--read-timeout-s)"}
    assert json.loads(heads[2][1]) == {"error": "the request body did not arrive within 0.5 s (--read-timeout-s); "
                                                "1 bytes came"}


def test_headers_past_the_limit_bad_http_and_a_stalled_keep_alive_request_each_get_one_json_error(fill_mask):
    """Headers still arriving past --max-header-bytes: a 431 before they end (the parser would keep them all);
    bytes that are not HTTP: a 400; a keep-alive connection's second request stalling in its headers: a 408
    after its first answer. Each one JSON error, then the connection closed; a good client is served meanwhile."""
    import json
    import select
    import socket

    with albert_serve(fill_mask, args=["--max-header-bytes", "2048", "--read-timeout-s", "1"]) as (url, process):
        host, port = url.removeprefix("http://").split(":")
        trickle, garbage, keep_alive = (socket.create_connection((host, int(port))) for _ in range(3))
        trickle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nx-long: ")
        for _ in range(6):  # sent until the answer comes: more after the server's close would reset the connection
            if select.select([trickle], [], [], 0.1)[0]:
                break
            trickle.sendall(b"y" * 1024)
        garbage.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello to a plain HTTP port\r\n\r\n")
        keep_alive.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /health/live HTTP/1.1\r\nHo")
        assert httpx.get(url + "/health", trust_env=False, timeout=30).status_code == 200
        answers = [read_all(s) for s in (trickle, garbage, keep_alive)]
        for sock in (trickle, garbage, keep_alive):
            sock.close()
    responses = [[part for part in answer.split(b"HTTP/1.1 ") if part] for answer in answers]
    assert [len(r) for r in responses] == [1, 1, 2], answers
    first, second = (part.split(b"\r\n\r\n", 1) for part in responses[2])
    assert first[0].startswith(b"200 OK") and json.loads(first[1]) == {"status": "live"}
    errors = [part.split(b"\r\n\r\n", 1) for part in (responses[0][0], responses[1][0], responses[2][1])]
    assert [head.split(b"\r\n")[0] for head, _ in errors] == [
        b"431 Request Header Fields Too Large", b"400 Bad Request", b"408 Request Timeout"]
    assert [json.loads(body) for _, body in errors] == [
        {"error": "the request line and headers are over 2048 bytes; this server takes at most 2048 "
                  "(--max-header-bytes)"},
        {"error": "the request is not valid HTTP/1.1; send a request line, headers and a body as RFC 9112 has them"},
        {"error": "the request line and headers did not arrive within 1 s (--read-timeout-s)"}]


def test_stalled_connections_past_the_descriptor_limit_do_not_lock_good_clients_out(fill_mask):
    """ulimit -n 200 and 250 connections that send a partial request and stall: the server keeps below its
    descriptor limit (closing the oldest stalled ones), answers every good request, and logs a few lines."""
    import socket

    with albert_serve(fill_mask, args=["--read-timeout-s", "30"], open_files=200) as (url, process):
        host, port = url.removeprefix("http://").split(":")
        stalled = []
        try:
            for _ in range(250):
                sock = socket.create_connection((host, int(port)))
                sock.sendall(b"POST /models/fill-mask HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                stalled.append(sock)
            time.sleep(0.5)
            with httpx.Client(trust_env=False, timeout=10) as http:
                statuses = [http.post(url + "/models/fill-mask", json={"inputs": SEED}).status_code
                            for _ in range(20)]
            assert statuses == [200] * 20
            room = int(open(f"/proc/{process.pid}/limits").read().split("Max open files")[1].split()[0])
            assert room == 200 and len(os.listdir(f"/proc/{process.pid}/fd")) < 200
        finally:
            for sock in stalled:
                sock.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        log = process.stderr.read()
    assert "Too many open files" not in log and "Traceback" not in log, log[:2000]
    assert len(log.splitlines()) <= 5, log


def test_workers_share_the_socket_and_stop_together(fill_mask):
    """--workers 2: two processes accept on one socket, answers equal pipeline()'s, SIGTERM stops both, exit 0."""
    from runtime import pipeline
    from serving import loadgen
    from tests.test_serving import same

    expected = same(pipeline(fill_mask)(SEED))
    with albert_serve(fill_mask, args=["--workers", "2"]) as (url, process):
        children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
        assert len(children) == 2
        answers = loadgen.run(url + "/models/fill-mask", [{"inputs": SEED}] * 24, concurrency=6, time_limit=60)
        assert [a.status for a in answers] == [200] * 24 and all(a.body == expected for a in answers)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert not any(os.path.exists(f"/proc/{pid}") for pid in children)
        assert "Traceback" not in process.stderr.read()
    missing = subprocess.run([sys.executable, "-m", "serving.cli", str(fill_mask) + "-missing", "--workers", "2",
                              "--port", "0"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("albert-serve: error: bundle ")


def test_by_default_a_worker_per_cpu_and_metrics_sum_them_all(fill_mask):
    """No --workers: one process per CPU, each listening on the port (connections spread over all of them), which
    no second server can share; /metrics, whichever worker answers it, counts every worker's requests, from the
    files each wrote; the files go when the server stops."""
    from serving import loadgen
    from tests.test_serving import metric

    cpus = len(os.sched_getaffinity(0))
    with albert_serve(fill_mask) as (url, process):
        children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
        assert len(children) == (cpus if cpus > 1 else 0)
        if cpus == 1:
            pytest.skip("one CPU: albert-serve runs one process, as --workers 1 (tested everywhere else)")
        answers = loadgen.run(url + "/models/fill-mask", [{"inputs": SEED}] * 48, concurrency=16, time_limit=60)
        assert [a.status for a in answers] == [200] * 48
        again = subprocess.run([sys.executable, "-m", "serving.cli", str(fill_mask), "--port", url.rsplit(":", 1)[1]],
                               capture_output=True, text=True, timeout=60, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert again.returncode == 1 and again.stderr.count("\n") == 1  # its workers do not join ours
        assert again.stderr.startswith("albert-serve: error: cannot listen on 127.0.0.1:"), again.stderr
        shared, = (folder for folder in Path(tempfile.gettempdir()).glob("albert-serve-metrics-*")
                   if any((folder / f"counter_{pid}.db").exists() for pid in children))
        counted = {path.stem.rsplit("_", 1)[1] for path in shared.glob("counter_*.db")}
        assert counted == set(children), (counted, children)  # every worker answered some of the 48
        for _ in range(6):  # new connections: any worker may answer
            text = httpx.get(url + "/metrics", trust_env=False, headers={"connection": "close"}).text
            assert metric(text, "albert_serve_requests_total", model="fill-mask", route="/models", status="200") == 48
            assert metric(text, "albert_serve_batch_size_sum", model="fill-mask") == 48
            assert metric(text, "albert_serve_queue_depth", model="fill-mask") == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert not shared.exists()


def test_ctrl_c_reaches_every_worker_and_each_answers_what_it_holds(fill_mask):
    """A terminal's Ctrl-C is SIGINT to the whole process group: the parent forwards SIGTERM too, and a worker
    told twice still finishes its requests in flight (uvicorn forces an exit only on a second SIGINT); exit 130."""
    import asyncio

    from serving import loadgen
    from tests.test_serving import metric

    bodies = [{"inputs": [f"Busy {i} " * 12 + "[MASK]."] * 256} for i in range(6)]
    with albert_serve(fill_mask) as (url, process):
        children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()

        async def scenario():
            sending = asyncio.create_task(loadgen.send_all(url + "/models/fill-mask", bodies, 6, time_limit=60))
            async with httpx.AsyncClient(trust_env=False) as http:
                while metric((await http.get(url + "/metrics")).text, "albert_serve_requests_in_flight") < 2:
                    await asyncio.sleep(0.02)
            for pid in [process.pid, *children]:  # as the terminal sends it (the test's own group is pytest's)
                os.kill(int(pid), signal.SIGINT)
            return await sending

        answers = asyncio.run(scenario())
        assert process.wait(30) == 130
        log = process.stderr.read()
        assert "Traceback" not in log, log[-4000:]
    assert [a.status for a in answers] == [200] * 6


def test_workers_stop_when_their_parent_is_killed(fill_mask):
    """SIGKILL leaves the parent no time to stop its workers: they stop themselves and free the port."""
    import socket

    with albert_serve(fill_mask) as (url, process):
        children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
        if not children:
            pytest.skip("one CPU: albert-serve runs one process, as --workers 1")
        process.kill()
        process.wait(10)
        deadline = time.monotonic() + 30
        while any(os.path.exists(f"/proc/{pid}") for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: open(f"/proc/{pid}/status").read().split("State:")[1].split("\n")[0].strip()
                for pid in children if os.path.exists(f"/proc/{pid}")}
        assert not left, left
        with socket.socket() as again:
            again.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))  # no worker holds the port any more

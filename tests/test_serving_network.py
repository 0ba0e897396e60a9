"""albert-serve's connections: keep-alive answers without Nagle's delay, slow and stalled clients bounded."""
from __future__ import annotations

import statistics
import time

import httpx
import pytest

from tests.test_serving import SEED, albert_serve

# albert-serve as the [serve] extra installs it: uvicorn without uvloop or httptools (uvloop sets TCP_NODELAY on
# every TCP socket by itself, asyncio only on sockets whose proto is IPPROTO_TCP)
PLAIN_UVICORN = """
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"uvloop", "httptools"}:
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
    waits for the client's delayed ACK, ~40 ms; the median of 35 answers on one connection is far below it."""
    with albert_serve(fill_mask, site=plain_site) as (url, _):
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
            for path, body in (("/health/live", None), ("/models/fill-mask", {"inputs": SEED})):
                seconds = []
                for _ in range(40):
                    started = time.perf_counter()
                    response = http.post(path, json=body) if body else http.get(path)
                    seconds.append(time.perf_counter() - started)
                    assert response.status_code == 200
                assert statistics.median(seconds[5:]) < 0.02, (path, sorted(seconds))

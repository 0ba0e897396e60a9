"""The Ray Serve deployment on a local Ray instance (2 CPUs, loopback, no dashboard, no HTTP proxy): two
replicas with Ray's batching answer as pipeline() does."""
from __future__ import annotations

import json

import pytest
import ray
from ray import serve

from runtime import pipeline
from serving.ray_serve import CallFailed, albert_app

SEED = "Plants create [MASK] through photosynthesis."


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    serve.start(proxy_location="Disabled")
    yield
    serve.shutdown()
    ray.shutdown()


def test_replicas_with_ray_batching_answer_as_pipeline(local_ray, handmade_bundle):
    bundle = handmade_bundle("fill-mask")
    handle = serve.run(albert_app(bundle, num_replicas=2, num_cpus=0.5, batch_wait_timeout_s=0.05), name="fill-mask",
                       route_prefix=None)
    texts = [f"Request {i} puts a [MASK] in sentence {i % 5}." for i in range(24)]
    params = [{} if i % 3 else {"top_k": 2} for i in range(24)]
    responses = [handle.answer.remote({"inputs": t, "parameters": p}) for t, p in zip(texts, params)]
    answers = [response.result(timeout_s=60) for response in responses]
    fill = pipeline(bundle)
    assert json.loads(json.dumps(answers)) == json.loads(json.dumps([fill(t, **p) for t, p in zip(texts, params)]))

    with pytest.raises(CallFailed, match=r"No mask_token \(\[MASK\]\) found on the input"):
        handle.answer.remote({"inputs": "no mask"}).result(timeout_s=60)
    assert handle.answer.remote({"inputs": SEED}).result(timeout_s=60) == fill(SEED)

    stats = {}
    for _ in range(20):
        seen = handle.stats.remote().result(timeout_s=60)
        stats[seen["replica"]] = seen["batch_sizes"]
    assert sum(sum(sizes) for sizes in stats.values()) <= 26
    assert any(max(sizes, default=0) > 1 for sizes in stats.values()), stats

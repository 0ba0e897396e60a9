"""The runtime as a Ray Serve deployment: replicas, each one pipeline, with Ray's own batching (@serve.batch).

    import ray
    from ray import serve
    from serving.ray_serve import albert_app

    ray.init(address="ray://head-node:10001")        # a cluster; ray.init() alone starts a local one
    handle = serve.run(albert_app("albert-fill-mask-fp32/", num_replicas=4), name="fill-mask")
    handle.answer.remote({"inputs": "Plants create [MASK] through photosynthesis."}).result()

Requests are the HF Inference API form albert-serve takes ({"inputs", "parameters"}), through a handle as
above or over Ray's HTTP proxy (POST to the route prefix); the answer is what pipeline() returns. Each replica
loads the bundle once (the path must be readable on every node). Calls with equal parameters that Ray batches
together share one forward of all their windows (serving.batcher.answer_calls, through the stages).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ray import serve

from runtime import pipeline
from runtime.errors import one_line
from runtime.lines import answer_json

from .batcher import answer_calls
from .errors import ServingError
from .requests import Limits, RequestError, hf_call


class CallFailed(ServingError):
    """A request's own error (bad input or parameters), carried back to the caller with the runtime's message."""


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1})
class AlbertDeployment:
    """A Ray Serve deployment answering HF Inference API calls with a bundle's pipeline, batched."""
    def __init__(self, bundle: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.005,
                 **pipeline_options: Any):
        self.pipe = pipeline(bundle, batch_size=max_batch_size, **pipeline_options)
        self.limits = Limits(max_batch_size=max_batch_size)
        self.batched.set_max_batch_size(max_batch_size)
        self.batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: list[int] = []

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def batched(self, calls: list) -> list:
        """The answers to a batch of calls, run in a thread; records the batch's size."""
        self.batch_sizes.append(sum(call.size for call in calls))
        return await asyncio.to_thread(answer_calls, self.pipe, calls)

    async def answer(self, body: Any) -> Any:
        """The HF Inference API body in, what pipeline() returns out; CallFailed for a bad request."""
        try:
            call = hf_call(body, self.pipe.task, self.limits)
        except (ValueError, RequestError) as exc:
            raise CallFailed(one_line(exc)) from None
        ok, value = await self.batched(call)
        if not ok:
            raise CallFailed(one_line(value))
        return value

    async def __call__(self, request):
        from starlette.responses import Response

        try:
            answer, status = await self.answer(await request.json()), 200
        except CallFailed as exc:
            answer, status = {"error": str(exc)}, 400
        except ValueError as exc:  # the body is not JSON
            answer, status = {"error": f"the request body is not valid JSON ({exc})"}, 400
        return Response(answer_json(answer), status_code=status, media_type="application/json")

    def stats(self) -> dict[str, Any]:
        """This replica's id and the sizes of the batches it ran."""
        return {"replica": serve.get_replica_context().replica_id.unique_id, "batch_sizes": list(self.batch_sizes)}


def albert_app(bundle: str, *, num_replicas: int = 2, num_cpus: float = 1, max_batch_size: int = 8,
               batch_wait_timeout_s: float = 0.005, **pipeline_options: Any):
    """A Serve application for one bundle (pass it to serve.run)."""
    return AlbertDeployment.options(num_replicas=num_replicas, ray_actor_options={"num_cpus": num_cpus}).bind(
        str(Path(bundle).resolve()), max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s, **pipeline_options
    )

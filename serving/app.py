"""The ASGI app: HF Inference API form, KServe v2 tensors, health and metrics over one Batcher per model.

    POST /models/{name}            {"inputs": X | [X, ...], "parameters": {...}} -> what pipeline()(X, **parameters) returns
    GET  /models                   the models served, with their tasks
    GET  /health, /health/ready    200 {"status": "ready"} while serving; 503 while shutting down
    GET  /health/live              200 while the process answers
    GET  /metrics                  Prometheus text
    POST /v2/models/{name}/infer   KServe v2: raw input tensors in, raw output tensors out (one backend run)
    GET  /v2/models/{name}         KServe v2 model metadata; /v2/health/live, /v2/health/ready

X is what one albert-run line holds: a text, or a JSON object ({"text", "text_pair"?}, {"question", "context"},
{"prompt", "choices"}). Every error is one JSON object {"error": "..."} with a 4xx status naming the problem
(400 bad input or parameters, 404 unknown model, 405, 413 too large, 422 bad tensors), 503 with Retry-After when
the model's queue is full, 504 past --timeout-s, 500 when the model itself fails.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runtime import Pipeline
from runtime.errors import BackendError, BundleError, is_failure, one_line

from .batcher import Batcher, QueueFull
from .metrics import Metrics
from .requests import Limits, RequestError, hf_call, response_json


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return response_json(content).encode("utf-8")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": message}, status_code=status, headers=headers)


async def read_json(request: Request, limits: Limits) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise RequestError(413, f"the request body has {declared} bytes; this server takes at most "
                                f"{limits.max_request_bytes} (--max-request-bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_request_bytes:
            raise RequestError(413, f"the request body is over {limits.max_request_bytes} bytes (--max-request-bytes)")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
        raise RequestError(400, f"the request body is not valid JSON ({reason})") from None


class Server:
    def __init__(self, pipelines: dict[str, Pipeline], limits: Limits = Limits()):
        self.pipelines = pipelines
        self.limits = limits
        self.metrics = Metrics()
        self.batchers: dict[str, Batcher] = {}
        self.ready = False

    def model(self, name: str) -> Pipeline:
        if name not in self.pipelines:
            raise RequestError(404, f"no model named {name!r}; this server has {', '.join(sorted(self.pipelines))}")
        return self.pipelines[name]

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        for name, pipe in self.pipelines.items():
            self.batchers[name] = batcher = Batcher(
                pipe,
                max_batch_size=self.limits.max_batch_size,
                max_delay=self.limits.max_delay,
                max_queue=self.limits.max_queue,
                on_batch=self._batch_observer(name),
            )
            self.metrics.queue_depth.labels(name).set_function(lambda b=batcher: b.depth)
            batcher.start()
        self.ready = True
        try:
            yield
        finally:
            self.ready = False  # uvicorn has stopped taking connections and finished the open requests
            await asyncio.gather(*(batcher.stop() for batcher in self.batchers.values()))

    def _batch_observer(self, name: str):
        def observe(size: int, seconds: float) -> None:
            self.metrics.batch_size.labels(name).observe(size)
            self.metrics.batch_seconds.labels(name).observe(seconds)

        return observe

    async def answer(self, request: Request, route: str, handler) -> Response:
        started = time.perf_counter()
        name = request.path_params.get("name", "")
        label = name if name in self.pipelines else ""
        try:
            response = await handler(request, name)
        except RequestError as exc:
            response = error(exc.status, str(exc), exc.headers)
        except (BundleError, BackendError) as exc:
            response = error(500, f"the model failed: {one_line(exc)}")
        except (ValueError, TypeError, KeyError) as exc:  # runtime's InputError/OptionError are ValueErrors
            response = error(400, one_line(exc))
        except BaseException as exc:  # one request's failure is that request's answer
            if not is_failure(exc):
                raise
            status = 400 if type(exc).__name__ == "PanicException" else 500  # the tokenizer refused this input
            response = error(status, one_line(exc) if status == 400 else f"internal error ({one_line(exc)})")
        status = str(response.status_code)
        self.metrics.requests.labels(label, route, status).inc()
        if response.status_code >= 400:
            self.metrics.errors.labels(label, status).inc()
        self.metrics.latency.labels(label, route).observe(time.perf_counter() - started)
        return response

    async def _await(self, future: asyncio.Future) -> Any:
        try:
            return await asyncio.wait_for(future, self.limits.timeout)
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within {self.limits.timeout:g} s (--timeout-s); try again later "
                                    "or send fewer inputs") from None

    async def hf(self, request: Request, name: str) -> Response:
        pipe = self.model(name)
        call = hf_call(await read_json(request, self.limits), pipe.task, self.limits)
        try:
            future = self.batchers[name].submit(call)
        except QueueFull as exc:
            raise RequestError(503, f"model {name} is overloaded ({exc}); retry after a second",
                               {"Retry-After": "1"}) from None
        with self.metrics.in_flight.labels(name).track_inprogress():
            return JSON(await self._await(future))

    async def v2_infer(self, request: Request, name: str) -> Response:
        pipe = self.model(name)
        body = await read_json(request, self.limits)
        inputs = v2_tensors(body, pipe)
        outputs = await asyncio.wait_for(self.batchers[name].run_in_thread(pipe.backend.infer, inputs),
                                         self.limits.timeout)
        wanted = [o.get("name") for o in body.get("outputs", [])] or list(outputs)
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise RequestError(422, f"model {name} has no output(s) {missing}; it has {list(outputs)}")
        return JSON({
            "model_name": name,
            "id": body.get("id", ""),
            "outputs": [
                {"name": n, "shape": list(outputs[n].shape), "datatype": V2_DATATYPES[outputs[n].dtype.name],
                 "data": outputs[n].ravel().tolist()}
                for n in wanted
            ],
        })

    async def v2_metadata(self, request: Request, name: str) -> Response:
        pipe = self.model(name)
        manifest = pipe.bundle.manifest

        def specs(tensors):
            return [{"name": t.name, "datatype": V2_DATATYPES[t.dtype], "shape": [d if isinstance(d, int) else -1
                                                                              for d in t.dims]} for t in tensors]

        return JSON({"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
                     "inputs": specs(manifest.inputs), "outputs": specs(manifest.outputs)})

    def app(self) -> Starlette:
        def route(path: str, handler, methods=("GET",), label: str | None = None):
            async def endpoint(request: Request) -> Response:
                return await self.answer(request, label or path, handler)

            return Route(path, endpoint, methods=list(methods))

        async def health(request, name):
            if not self.ready:
                return JSON({"status": "shutting down" if self.batchers else "starting"}, status_code=503)
            return JSON({"status": "ready", "models": sorted(self.pipelines)})

        async def live(request, name):
            return JSON({"status": "live"})

        async def models(request, name):
            return JSON([{"name": n, "task": p.task} for n, p in sorted(self.pipelines.items())])

        async def metrics(request, name):
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        async def v2_model_ready(request, name):
            self.model(name)
            return await health(request, name)

        async def http_error(request: Request, exc: HTTPException) -> Response:
            return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

        routes = [
            route("/health", health), route("/health/ready", health), route("/health/live", live),
            route("/metrics", metrics), route("/models", models),
            route("/models/{name}", self.hf, ("POST",), "/models"),
            route("/v2/health/live", live), route("/v2/health/ready", health),
            route("/v2/models/{name}", self.v2_metadata, label="/v2/models"),
            route("/v2/models/{name}/ready", v2_model_ready, label="/v2/models/ready"),
            route("/v2/models/{name}/infer", self.v2_infer, ("POST",), "/v2/models/infer"),
        ]
        app = Starlette(routes=routes, lifespan=self.lifespan, exception_handlers={HTTPException: http_error})
        return HeaderLimit(app, self.limits.max_header_bytes)


class HeaderLimit:
    """431 for a request line and headers over the limit (h11 bounds only what it has to buffer)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(name) + len(value) + 4 for name, value in scope["headers"]
            )
            if size > self.limit:
                response = error(431, f"the request line and headers have {size} bytes; this server takes at most "
                                      f"{self.limit} (--max-header-bytes)")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


V2_DATATYPES = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "float16": "FP16", "float64": "FP64",
                "bool": "BOOL"}
V2_DTYPES = {v: k for k, v in V2_DATATYPES.items()}


def v2_tensors(body: Any, pipe: Pipeline) -> dict[str, np.ndarray]:
    """KServe v2 `inputs` as the arrays the backend takes; 422 names what does not fit."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise RequestError(422, 'a v2 infer request is {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    specs = {t.name: t for t in pipe.bundle.manifest.inputs}
    arrays = {}
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(tensor):
            raise RequestError(422, "each v2 input has name, shape, datatype and data")
        name = tensor["name"]
        if name not in specs:
            raise RequestError(422, f"model has no input {name!r}; it takes {', '.join(specs)}")
        if tensor["datatype"] != V2_DATATYPES[specs[name].dtype]:
            raise RequestError(422, f"input {name} is {V2_DATATYPES[specs[name].dtype]}, not {tensor['datatype']}")
        shape = tensor["shape"]
        if not isinstance(shape, list) or len(shape) != len(specs[name].dims) or not all(
            isinstance(d, int) and d > 0 for d in shape
        ):
            raise RequestError(422, f"input {name} has dims {specs[name].dims}; got shape {shape}")
        try:
            arrays[name] = np.asarray(tensor["data"], dtype=V2_DTYPES[tensor["datatype"]]).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise RequestError(422, f"input {name}: data does not fill shape {shape} ({exc})") from None
    missing = [n for n in pipe.backend.input_names if n not in arrays]
    if missing:
        raise RequestError(422, f"missing input(s) {', '.join(missing)}")
    shapes = {tuple(a.shape) for a in arrays.values()}
    if len(shapes) > 1:
        raise RequestError(422, f"inputs have different shapes {sorted(shapes)}; they take one shape")
    vocab = pipe.config.get("vocab_size")
    ids = arrays.get("input_ids")
    if ids is not None and isinstance(vocab, int) and ids.size and not (0 <= ids.min() and ids.max() < vocab):
        raise RequestError(422, f"input_ids must lie in [0, {vocab}) (the vocabulary); got {ids.min()}..{ids.max()}")
    return arrays

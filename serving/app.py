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
(400 bad input or parameters, 404 unknown model, 405, 408 a body that did not arrive within --read-timeout-s,
413 a request or an answer over its limit, 422 bad tensors), 503 with Retry-After when the model's queue is full
or the server is shutting down, 504 past --timeout-s, 500 when the model itself fails or on an internal error
(named as such: never blamed on the client). Answers past a few hundred values are serialized off the event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from starlette.requests import ClientDisconnect

from runtime import Pipeline
from runtime.backends import check_feeds
from runtime.errors import AlbertRuntimeError, BackendError, BundleError, TensorError, is_failure, one_line
from runtime.lines import answer_json

from .batcher import Batcher, QueueFull
from .cores import Neighbours, Widening
from .metrics import Metrics
from .requests import Limits, RequestError, hf_call


class JSON(JSONResponse):
    """A JSON response rendered as the server writes every answer (see runtime.lines.answer_json)."""
    def render(self, content: Any) -> bytes:
        """The content as UTF-8 JSON bytes, as answer_json writes it."""
        return answer_json(content).encode("utf-8")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSON:
    """A JSON error response {"error": message} with `status` and any extra headers."""
    return JSON({"error": message}, status_code=status, headers=headers)


INLINE_JSON_VALUES = 256  # an answer of at most this many values is serialized on the event loop (~20 us)


async def json_answer(content: Any, limits: Limits) -> Response:
    """A 200 JSON answer, serialized on a worker thread unless it is small (a large answer must not stall the
    event loop; for a small one the hop costs more than the work), refused with 413 past --max-response-bytes."""
    if holds_at_most(content, INLINE_JSON_VALUES):
        body = answer_json(content).encode("utf-8")
    else:
        body = await asyncio.to_thread(lambda: answer_json(content).encode("utf-8"))
    if len(body) > limits.max_response_bytes:
        raise RequestError(413, f"the answer has {len(body)} bytes; this server sends at most "
                                f"{limits.max_response_bytes} (--max-response-bytes); ask for fewer inputs or a "
                                "smaller top_k")
    return Response(body, media_type="application/json")


def holds_at_most(content: Any, count: int) -> bool:
    """Whether the answer holds at most `count` values (strings counted by the 64 characters, arrays by their
    elements), found without walking past the count."""
    left, stack = count, [content]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, np.ndarray):
            left -= value.size
        else:
            left -= 1 + len(value) // 64 if isinstance(value, str) else 1
        if left < 0 or len(stack) > count:
            return False
    return True


async def read_json(request: Request, limits: Limits) -> Any:
    """The request's body parsed as JSON; RequestError 413 over the size limit, 408 past the read timeout, else 400."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise RequestError(413, f"the request body has {declared} bytes; this server takes at most "
                                f"{limits.max_request_bytes} (--max-request-bytes)")
    body = bytearray()
    try:
        async with asyncio.timeout(limits.read_timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_request_bytes:
                    raise RequestError(413, f"the request body is over {limits.max_request_bytes} bytes "
                                            "(--max-request-bytes)")
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {limits.read_timeout:g} s "
                                f"(--read-timeout-s); {len(body)} bytes came", {"connection": "close"}) from None
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before sending the whole body") from None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
        raise RequestError(400, f"the request body is not valid JSON ({reason})") from None
    except RecursionError:
        raise RequestError(400, "the request body nests JSON arrays or objects too deeply to read") from None


class Server:
    """The HTTP server of a set of pipelines: their batchers, limits, routes and lifespan."""
    def __init__(self, pipelines: dict[str, Pipeline], limits: Limits = Limits(), notices=None,
                 neighbours: Neighbours | None = None):
        """neighbours: where this worker tells the others how many requests it has in flight (serving.cores)."""
        from .connections import Notices

        self.pipelines = pipelines
        self.neighbours = neighbours
        self.limits = limits
        self.notices = notices or Notices()
        self.metrics = Metrics()
        self.batchers: dict[str, Batcher] = {}
        self.ready = False
        self.closing: asyncio.Future | None = None  # set when --shutdown-timeout-s has run out
        self.stop_deadline: float | None = None  # loop time by which shutdown must be done

    def begin_shutdown(self, grace: float) -> None:
        """SIGTERM: answer what can be answered within `grace` seconds; just before it runs out, every request
        still waiting gets one JSON 503 (uvicorn would cancel it into a plain-text 500 and a traceback)."""
        if self.stop_deadline is not None or self.closing is None:
            return
        loop = asyncio.get_running_loop()
        self.ready = False
        self.stop_deadline = loop.time() + grace
        loop.call_later(max(grace - 0.25, 0.0), lambda: self.closing.done() or self.closing.set_result(None))

    def model_threads_busy(self) -> bool:
        """Whether any model's batcher has a run in its thread now."""
        return any(batcher.thread_busy for batcher in self.batchers.values())

    def model(self, name: str) -> Pipeline:
        """The pipeline named `name`; RequestError 404 naming the models served otherwise."""
        if name not in self.pipelines:
            raise RequestError(404, f"no model named {name!r}; this server has {', '.join(sorted(self.pipelines))}")
        return self.pipelines[name]

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        """For the app's life, a started batcher per model and the loop's exception handler; batchers stopped after."""
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.notices.loop_exception)  # e.g. accept() out of descriptors: one line
        self.closing = loop.create_future()
        for name, pipe in self.pipelines.items():
            self.batchers[name] = batcher = Batcher(
                pipe,
                max_batch_size=self.limits.max_batch_size,
                max_delay=self.limits.max_delay,
                max_queue=self.limits.max_queue,
                limits=self.limits,
                on_batch=self._batch_observer(name),
                on_depth=self._depth_observer(name),
            )
            batcher.start()
            if isinstance(pipe.backend, Widening):
                pipe.backend.on_wide = self.metrics.wide_batches.labels(name).inc
        self.ready = True
        try:
            yield
        finally:
            self.ready = False  # uvicorn has stopped taking connections and finished the open requests
            left = None if self.stop_deadline is None else max(self.stop_deadline - loop.time(), 0.0)
            await asyncio.gather(*(batcher.stop(left) for batcher in self.batchers.values()))

    def _depth_observer(self, name: str):
        gauge = self.metrics.queue_depth.labels(name)

        def observe(depth: int) -> None:
            gauge.set(depth)
            if self.neighbours is not None:
                self.neighbours.report(sum(batcher.depth for batcher in self.batchers.values()))

        return observe

    def _batch_observer(self, name: str):
        def observe(size: int, seconds: float) -> None:
            self.metrics.batch_size.labels(name).observe(size)
            self.metrics.batch_seconds.labels(name).observe(seconds)

        return observe

    async def answer(self, request: Request, route: str, handler) -> Response:
        """The response of `handler` to one request on `route`, timed and counted in the metrics."""
        started = time.perf_counter()
        name = request.path_params.get("name", "")
        label = name if name in self.pipelines else ""
        try:
            response = await handler(request, name)
        except RequestError as exc:
            response = error(exc.status, str(exc), exc.headers)
        except (BundleError, BackendError) as exc:
            response = error(500, f"the model failed: {one_line(exc)}")
        except AlbertRuntimeError as exc:  # the runtime refused this input or these parameters, naming why
            response = error(400, one_line(exc))
        except BaseException as exc:  # one request's failure is that request's answer
            if not is_failure(exc):
                raise
            if type(exc).__name__ == "PanicException":  # the tokenizer refused this input
                response = error(400, one_line(exc))
            else:  # a bug of the server's or the runtime's, not the client's fault: a 500 that says so
                response = error(500, f"internal error ({type(exc).__name__}: {one_line(exc)}); please report it")
        status = str(response.status_code)
        self.metrics.requests.labels(label, route, status).inc()
        if response.status_code >= 400:
            self.metrics.errors.labels(label, status).inc()
        self.metrics.latency.labels(label, route).observe(time.perf_counter() - started)
        return response

    async def _await(self, future: asyncio.Future) -> Any:
        """The answer, a 504 past --timeout-s, or a 503 once shutdown's time has run out; the work of a request
        given up is cancelled (its calls leave the queue unrun)."""
        waiting = {future} if self.closing is None else {future, self.closing}
        done, _ = await asyncio.wait(waiting, timeout=self.limits.timeout, return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        future.cancel()
        if done:
            raise RequestError(503, "the server is shutting down and could not finish this request in time; "
                                    "retry on another replica", {"Retry-After": "1"})
        raise RequestError(504, f"no answer within {self.limits.timeout:g} s (--timeout-s); try again later "
                                "or send fewer inputs")

    async def hf(self, request: Request, name: str) -> Response:
        """Answer an HF Inference API call to the model `name`."""
        pipe = self.model(name)
        call = hf_call(await read_json(request, self.limits), pipe.task, self.limits)
        try:
            future = self.batchers[name].submit(call)
        except QueueFull as exc:
            raise RequestError(503, f"model {name} is overloaded ({exc}); retry after a second",
                               {"Retry-After": "1"}) from None
        with self.metrics.in_flight.labels(name).track_inprogress():
            return await json_answer(await self._await(future), self.limits)

    async def v2_infer(self, request: Request, name: str) -> Response:
        """Answer a KServe v2 inference request to the model `name`."""
        pipe = self.model(name)
        body = await read_json(request, self.limits)
        inputs = v2_tensors(body, pipe)
        wanted = v2_outputs(body, pipe)
        shape = next(iter(inputs.values())).shape
        size = v2_answer_bytes(pipe, wanted, shape)
        if size > self.limits.max_response_bytes:
            raise RequestError(413, f"outputs {', '.join(wanted)} for inputs of shape {list(shape)} would take about "
                                    f"{size} bytes; this server sends at most {self.limits.max_response_bytes} "
                                    "(--max-response-bytes); send fewer rows or ask for fewer outputs")
        try:
            running = self.batchers[name].run_raw(pipe.backend.infer, inputs)
        except QueueFull as exc:
            raise RequestError(503, f"model {name} is overloaded ({exc}); retry after a second",
                               {"Retry-After": "1"}) from None
        outputs = await self._await(running)
        answer = {"model_name": name, "id": body.get("id", ""), "outputs": [
            {"name": n, "shape": list(outputs[n].shape), "datatype": V2_DATATYPES[outputs[n].dtype.name],
             "data": outputs[n].ravel()} for n in wanted]}
        return await json_answer(answer, self.limits)

    async def v2_metadata(self, request: Request, name: str) -> Response:
        """The KServe v2 metadata of the model `name`, from its bundle's manifest."""
        pipe = self.model(name)
        manifest = pipe.bundle.manifest

        def specs(tensors):
            return [{"name": t.name, "datatype": V2_DATATYPES[t.dtype], "shape": [d if isinstance(d, int) else -1
                                                                              for d in t.dims]} for t in tensors]

        return JSON({"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
                     "inputs": specs(manifest.inputs), "outputs": specs(manifest.outputs)})

    def app(self) -> Starlette:
        """The Starlette application serving the routes."""
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
            return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)

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
    """431 for a complete request line and headers over the limit (serving.connections bounds those still arriving)."""

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
    """KServe v2 `inputs` as the arrays the backend takes; 422 names the tensor that does not fit."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise RequestError(422, 'a v2 infer request is {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    specs = {t.name: t for t in pipe.bundle.manifest.inputs}
    arrays = {}
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(tensor):
            raise RequestError(422, "each v2 input has name, shape, datatype and data")
        name = tensor["name"]
        if not isinstance(name, str) or name not in specs:
            raise RequestError(422, f"model has no input {name!r}; it takes {', '.join(specs)}")
        if tensor["datatype"] != V2_DATATYPES[specs[name].dtype]:
            raise RequestError(422, f"input {name} is {V2_DATATYPES[specs[name].dtype]}, not {tensor['datatype']!r}")
        shape = tensor["shape"]
        if not isinstance(shape, list) or len(shape) != len(specs[name].dims) or not all(
            type(d) is int and d > 0 for d in shape
        ):
            raise RequestError(422, f"input {name} has dims {specs[name].dims}; got shape {shape}")
        try:
            data = np.asarray(tensor["data"])
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise RequestError(422, f"input {name}: data is not a flat or nested list of numbers ({exc})") from None
        dtype = np.dtype(V2_DTYPES[tensor["datatype"]])
        if dtype.kind in "iu" and data.size and data.dtype.kind not in "iu":
            raise RequestError(422, f"input {name} is {tensor['datatype']}: its data must be integers within "
                                    f"[{np.iinfo(dtype).min}, {np.iinfo(dtype).max}]")
        if data.size != int(np.prod(shape)):
            raise RequestError(422, f"input {name}: data does not fill shape {shape} ({data.size} values for "
                                    f"{int(np.prod(shape))})")
        arrays[name] = data.astype(dtype).reshape(shape)
    try:
        return check_feeds(pipe.bundle, arrays)
    except TensorError as exc:
        raise RequestError(422, str(exc)) from None


def v2_outputs(body: dict, pipe: Pipeline) -> list[str]:
    """The outputs a v2 request asks for (all by default), checked before anything runs."""
    names = [t.name for t in pipe.bundle.manifest.outputs]
    asked = body.get("outputs")
    if asked is None:
        return names
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise RequestError(422, 'outputs is a list of {"name": ...} objects, one per output wanted')
    missing = [o["name"] for o in asked if o["name"] not in names]
    if missing:
        raise RequestError(422, f"model has no output(s) {', '.join(map(repr, missing))}; it has {', '.join(names)}")
    return [o["name"] for o in asked] or names


JSON_BYTES_PER_VALUE = {"float32": 25, "float16": 25, "float64": 25, "int64": 22, "int32": 13, "bool": 7}


def v2_answer_bytes(pipe: Pipeline, wanted: list[str], shape: tuple[int, ...]) -> int:
    """An upper bound of the JSON answer's size, from each output's dims (the manifest's, with the request's
    batch/choices/sequence sizes and the config's vocabulary, labels and hidden sizes) times its dtype's widest
    JSON number."""
    config = pipe.config
    sizes = dict(zip(pipe.bundle.manifest.inputs[0].dims, shape))
    sizes.update(vocab=config.get("vocab_size"), hidden=config.get("hidden_size"),
                 labels=len(config.get("id2label") or {}) or config.get("num_labels"))
    fallback = max(v for v in (config.get("max_position_embeddings"), config.get("num_hidden_layers"),
                               config.get("num_attention_heads"), 1) if isinstance(v, int))
    total = 0
    for spec in pipe.bundle.manifest.outputs:
        if spec.name in wanted:
            count = 1
            for dim in spec.dims:
                value = dim if isinstance(dim, int) else int(dim) if str(dim).isdigit() else sizes.get(dim)
                count *= value if isinstance(value, int) else fallback
            total += count * JSON_BYTES_PER_VALUE.get(spec.dtype, 25)
    return total

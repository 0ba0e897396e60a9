"""The peers devtools/serve_bench.py runs beside albert-serve, each serving the same bundle through pipeline():

    python -m devtools.serve_peers litserve BUNDLE --port P [--workers N] [--threads T]
    python -m devtools.serve_peers ray BUNDLE --port P [--workers N] [--max-batch-size B] [--threads T]

litserve: LitServe's own server (FastAPI, uvicorn, its worker processes) with a LitAPI that calls pipeline() once
per request, as a LitServe user wraps a pipeline. ray: a local Ray with Ray Serve's HTTP proxy in front of
serving.ray_serve's deployment (@serve.batch, N replicas). Both take albert-serve's body ({"inputs", "parameters"})
at POST /predict (litserve) or POST / (ray), answer what pipeline() returns, and print `serving URL` on stderr
once they take requests.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path


try:
    import litserve as ls
except ImportError:  # the ray peer runs without it
    ls = None

if ls is not None:
    class AlbertAPI(ls.LitAPI):
        """pipeline() behind LitServe, one call per request (at module level: LitServe's workers unpickle it)."""

        def __init__(self, bundle: Path, threads: int | None):
            super().__init__()
            self.bundle, self.threads = bundle, threads

        def setup(self, device):
            from runtime import pipeline

            self.pipe = pipeline(self.bundle, **({"threads": self.threads} if self.threads else {}))

        def decode_request(self, request):
            return request["inputs"], request.get("parameters") or {}

        def predict(self, call):
            inputs, parameters = call
            return self.pipe(inputs, **parameters)

        def encode_response(self, output):
            from runtime.lines import answer_json

            return json.loads(answer_json(output))  # numpy scalars as JSON numbers, as albert-serve sends them


def litserve(bundle: Path, port: int, workers: int, threads: int | None) -> None:
    print(f"serving http://127.0.0.1:{port}", file=sys.stderr, flush=True)  # the bench waits for /health
    ls.LitServer(AlbertAPI(bundle, threads), accelerator="cpu", workers_per_device=workers, timeout=120).run(
        host="127.0.0.1", port=port, generate_client_file=False)


def ray(bundle: Path, port: int, workers: int, max_batch_size: int, threads: int | None) -> None:
    import ray as ray_module
    from ray import serve

    from runtime.arguments import cpu_count
    from serving.ray_serve import albert_app

    ray_module.init(num_cpus=cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                    configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(albert_app(str(bundle), num_replicas=workers, num_cpus=cpu_count() / workers,
                         max_batch_size=max_batch_size, batch_wait_timeout_s=0.002,
                         **({"threads": threads} if threads else {})), route_prefix="/", name="albert")
    print(f"serving http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray_module.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.serve_peers", description=__doc__.split("\n\n")[0])
    p.add_argument("peer", choices=("litserve", "ray"))
    p.add_argument("bundle", type=Path)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.peer == "litserve":
        litserve(args.bundle, args.port, args.workers, args.threads)
    else:
        ray(args.bundle, args.port, args.workers, args.max_batch_size, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())

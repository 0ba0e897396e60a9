"""albert-serve: serve bundles over HTTP with dynamic batching (see serving.app for the routes).

    albert-serve BUNDLE [BUNDLE ...] [--host 127.0.0.1] [--port 8000] [--max-batch-size N] [--max-delay-ms D]
                 [--max-queue N] [--timeout-s T] [--max-request-bytes N] [--max-input-chars N] [--max-inputs N]
                 [--max-header-bytes N] [--backend onnxruntime|openvino|tensorrt] [--device cpu|cuda] [--threads N]
                 [--shutdown-timeout-s T] [--log-level LEVEL]

Each bundle is loaded once, before the server listens, and served as /models/{its directory's name}. SIGTERM
or Ctrl-C: stop taking connections, answer the requests in flight, then exit 0.
Exit status: 2 usage errors (two bundles with one name, bad option values); 1 a bundle or backend that cannot
be used, or a port that cannot be bound. Messages are one "albert-serve: error: ..." line on stderr.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

from runtime.arguments import at_least, device_argument
from runtime.backends import BACKENDS
from runtime.errors import AlbertRuntimeError, OptionError, UsageError

from .errors import ListenError

PROG = "albert-serve"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Serve albert-export bundles over HTTP, with dynamic batching.")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle directories; each is served under its name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=at_least(0), default=8000, help="0: any free port (the address is printed on stderr)")
    p.add_argument("--max-batch-size", type=at_least(1), default=8, help="inputs run together (default 8)")
    p.add_argument("--max-delay-ms", type=at_least(0, float), default=5.0,
                   help="how long a batch waits for more requests (default 5)")
    p.add_argument("--max-queue", type=at_least(1), default=256, help="requests waiting per model before 503")
    p.add_argument("--timeout-s", type=at_least(0.001, float), default=30.0, help="per request, queueing included")
    p.add_argument("--max-request-bytes", type=at_least(1), default=1 << 20)
    p.add_argument("--max-input-chars", type=at_least(1), default=100_000, help="per text of one input")
    p.add_argument("--max-inputs", type=at_least(1), default=256, help="inputs in one request's list")
    p.add_argument("--max-header-bytes", type=at_least(1024), default=16384, help="request line and headers")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    p.add_argument("--device", type=device_argument, default=None, help="cpu (default for onnxruntime), cuda or cuda:N")
    p.add_argument("--threads", type=at_least(1), default=None, help="onnxruntime intra-op threads per model")
    p.add_argument("--shutdown-timeout-s", type=at_least(0, float), default=30.0,
                   help="how long to wait for requests in flight on SIGTERM")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    return p


def load_pipelines(args: argparse.Namespace) -> dict:
    from runtime import pipeline

    names: dict[str, str] = {}
    for bundle in args.bundles:
        name = Path(bundle).resolve().name
        if name in names:
            raise UsageError(f"{bundle} and {names[name]} are both named {name!r}; serve bundles with distinct names")
        names[name] = bundle
    device = args.device or ("cuda" if args.backend == "tensorrt" else "cpu")
    extra = {"threads": args.threads} if args.threads else {}
    return {
        name: pipeline(bundle, backend=args.backend, device=device, batch_size=args.max_batch_size, **extra)
        for name, bundle in names.items()
    }


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import Limits, Server

    limits = Limits(
        max_batch_size=args.max_batch_size,
        max_delay=args.max_delay_ms / 1000,
        max_queue=args.max_queue,
        timeout=args.timeout_s,
        max_request_bytes=args.max_request_bytes,
        max_input_chars=args.max_input_chars,
        max_inputs=args.max_inputs,
        max_header_bytes=args.max_header_bytes,
    )
    server = Server(load_pipelines(args), limits)
    config = uvicorn.Config(
        server.app(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=args.shutdown_timeout_s,
        h11_max_incomplete_event_size=args.max_header_bytes,
        http="h11",  # its header limit is the one --max-header-bytes sets
    )
    listener = bound_socket(args.host, args.port)
    host, port = listener.getsockname()[:2]
    print(f"{PROG}: serving {', '.join(sorted(server.pipelines))} on http://{host}:{port}", file=sys.stderr, flush=True)
    # uvicorn re-raises the SIGTERM it handled once it has shut down; a graceful stop is then a normal exit
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def bound_socket(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when their proto says TCP; without
        # it every keep-alive answer waits ~40 ms for the client's delayed ACK (Nagle)
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host") from None
    listener.set_inheritable(True)
    return listener


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, OptionError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (AlbertRuntimeError, OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

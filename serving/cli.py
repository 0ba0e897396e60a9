"""albert-serve: serve bundles over HTTP with dynamic batching (see serving.app for the routes).

    albert-serve BUNDLE [BUNDLE ...] [--host 127.0.0.1] [--port 8000] [--max-batch-size N] [--max-delay-ms D]
                 [--max-queue N] [--timeout-s T] [--max-request-bytes N] [--max-response-bytes N]
                 [--max-windows N] [--max-answers N] [--max-input-chars N] [--max-inputs N]
                 [--max-header-bytes N] [--read-timeout-s T]
                 [--max-connections N] [--backend onnxruntime|openvino|tensorrt] [--device cpu|cuda] [--threads N]
                 [--workers N] [--shutdown-timeout-s T] [--log-level LEVEL] [--version]

Each bundle is loaded once per worker, before the server listens, and served as /models/{its directory's name}.
SIGTERM or Ctrl-C (the terminal's SIGINT to every worker): stop taking connections, answer the requests in
flight, then exit 0 (130 after Ctrl-C, as albert-run and albert-export).
Exit status: 2 usage errors (two bundles with one name, bad option values); 1 a bundle or backend that cannot
be used, a missing package of the serve extra, or a port that cannot be bound. Messages are one
"albert-serve: error: ..." line on stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Callable

from runtime import __version__
from runtime.arguments import RANGES, Parser, cpu_count, device_argument, device_or_default, number
from runtime.backends import BACKENDS, backend_from_bundle
from runtime.errors import AlbertRuntimeError, OptionError, UsageError
from runtime.extras import missing_module_line

from .cores import WIDE_MAX_BYTES, Neighbours, Widening
from .errors import ListenError
from .metrics import shared_between_processes
from .requests import Limits

PROG = "albert-serve"
DEFAULTS = Limits()  # the limits' defaults, in serving.requests.Limits alone


def parser() -> argparse.ArgumentParser:
    """The albert-serve command line parser."""
    p = Parser(prog=PROG, description="Serve albert-export bundles over HTTP, with dynamic batching.")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle directories; each is served under its name")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=number("port"), default=8000,
                   help="0: any free port (the address is printed on stderr)")
    p.add_argument("--max-batch-size", type=number("max_batch_size"), default=DEFAULTS.max_batch_size,
                   help="windows run together (default %(default)s)")
    p.add_argument("--max-batch-tokens", type=number("max_batch_tokens"), default=DEFAULTS.max_batch_tokens,
                   help="tokens run together, padding included (default %(default)s; a longer window runs alone): "
                        "past ~1024, two workers' batches outgrow the CPU caches and each window costs more")
    p.add_argument("--max-delay-ms", type=number("max_delay_ms"), default=DEFAULTS.max_delay * 1000,
                   help="how long a batch waits for more requests (default %(default)s)")
    p.add_argument("--max-queue", type=number("max_queue"), default=DEFAULTS.max_queue,
                   help="requests taken per model (in each worker) before 503")
    p.add_argument("--timeout-s", type=number("timeout_s"), default=DEFAULTS.timeout,
                   help="per request, queueing included")
    p.add_argument("--max-request-bytes", type=number("max_request_bytes"), default=DEFAULTS.max_request_bytes)
    p.add_argument("--max-response-bytes", type=number("max_response_bytes"), default=DEFAULTS.max_response_bytes,
                   help="largest answer (default 16 MiB); a v2 request whose outputs would exceed it is refused "
                        "before it runs")
    p.add_argument("--max-windows", type=number("max_windows"), default=DEFAULTS.max_windows,
                   help="model windows one request may make (QA/NER chunks, multiple-choice rows; default %(default)s)")
    p.add_argument("--max-answers", type=number("max_answers"), default=DEFAULTS.max_answers,
                   help="answers one request may ask for (fill-mask: masks x top_k; default %(default)s)")
    p.add_argument("--max-input-chars", type=number("max_input_chars"), default=DEFAULTS.max_input_chars,
                   help="per text of one input")
    p.add_argument("--max-inputs", type=number("max_inputs"), default=DEFAULTS.max_inputs,
                   help="inputs in one request's list")
    p.add_argument("--max-header-bytes", type=number("max_header_bytes"), default=DEFAULTS.max_header_bytes,
                   help="request line and headers")
    p.add_argument("--read-timeout-s", type=number("read_timeout_s"), default=DEFAULTS.read_timeout,
                   help="a request's line and headers, then its body, each within this (default %(default)s)")
    p.add_argument("--max-connections", type=number("max_connections"), default=1000,
                   help="open connections per worker (default 1000, always below the file-descriptor limit)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    p.add_argument("--device", type=device_argument, default=None, help="cpu (default for onnxruntime), cuda or cuda:N")
    p.add_argument("--threads", type=number("threads"), default=None,
                   help=f"intra-op threads per model (1..{cpu_count()}, the CPUs; default with several workers: "
                        "the CPUs / N, and every CPU for a large batch while the other workers are idle)")
    p.add_argument("--workers", type=number("workers"), default=None,
                   help=f"server processes on the one port, each with its own pipelines and its share of the "
                        f"CPUs (default: one per CPU, {default_workers()} here; 1 on a GPU); /metrics sums them all")
    p.add_argument("--shutdown-timeout-s", type=number("shutdown_timeout_s"), default=30.0,
                   help="how long to wait for requests in flight on SIGTERM")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    return p


def load_pipelines(args: argparse.Namespace, neighbours: Neighbours | None = None) -> dict:
    """The pipelines of the bundles given, by the name each is served under; with `neighbours` (workers sharing the
    CPUs, no --threads), each model small enough is also held on every CPU's threads (serving.cores)."""
    from runtime import Pipeline, pipeline

    names: dict[str, str] = {}
    for bundle in args.bundles:
        name = Path(bundle).resolve().name
        if name in names:
            raise UsageError(f"{bundle} and {names[name]} are both named {name!r}; serve bundles with distinct names")
        names[name] = bundle
    device = device_or_default(args.device, args.backend)
    extra = {"threads": args.threads} if args.threads else {}
    pipelines = {
        name: pipeline(bundle, backend=args.backend, device=device, batch_size=args.max_batch_size, **extra)
        for name, bundle in names.items()
    }
    if neighbours is None or args.backend == "tensorrt" or device != "cpu":
        return pipelines
    for name, pipe in pipelines.items():
        if pipe.bundle.model_bytes <= WIDE_MAX_BYTES:
            wide = backend_from_bundle(pipe.bundle, pipe.backend_name, device, threads=cpu_count())
            pipelines[name] = Pipeline(pipe.bundle, engine=Widening(pipe.backend, wide, neighbours, pipe.bundle.config),
                                       batch_size=args.max_batch_size)
    return pipelines


def run(args: argparse.Namespace) -> int:
    """Serve the bundles as the arguments ask; the exit status."""
    if args.workers is None:  # one process per CPU; a GPU is fed by one
        on_cpu = device_or_default(args.device, args.backend) == "cpu"
        args.workers = default_workers() if on_cpu else 1
    with shared_between_processes() if args.workers > 1 else contextlib.nullcontext():
        try:  # the serve extra's packages, before anything is loaded
            import uvicorn  # noqa: F401

            from . import app, connections  # noqa: F401
        except ModuleNotFoundError as exc:  # an install without the serve extra
            line = missing_module_line(exc.name or "", PROG)
            if line is None:
                raise
            print(f"{PROG}: error: {line}", file=sys.stderr)
            return 1
        return run_workers(args) if args.workers > 1 else serve(args)


def default_workers() -> int:
    """--workers' default on CPUs: one process per CPU (each then runs its models on one intra-op thread)."""
    return min(cpu_count(), int(RANGES["workers"].maximum))


def serve(args: argparse.Namespace, listener: socket.socket | None = None, ready: int | None = None,
          neighbours: Neighbours | None = None) -> int:
    """One server process: load the bundles, listen (on `listener` when a parent bound it), serve until
    SIGTERM. `ready`: a pipe to tell the parent this worker is serving (instead of printing the address);
    `neighbours`: the workers' requests in flight, this one's joined already (serving.cores)."""
    import uvicorn

    from .app import Server
    from .connections import Guard, Notices, descriptor_room, guarded_protocol

    room = descriptor_room()
    if room < 8:
        raise ListenError(f"only {room} file descriptors are free (ulimit -n); raise the limit to serve connections")
    max_connections = min(args.max_connections, room)
    limits = Limits(
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_delay=args.max_delay_ms / 1000,
        max_queue=args.max_queue,
        timeout=args.timeout_s,
        max_request_bytes=args.max_request_bytes,
        max_response_bytes=args.max_response_bytes,
        max_windows=args.max_windows,
        max_answers=args.max_answers,
        max_input_chars=args.max_input_chars,
        max_inputs=args.max_inputs,
        max_header_bytes=args.max_header_bytes,
        read_timeout=args.read_timeout_s,
    )
    notices = Notices()
    server = Server(load_pipelines(args, neighbours), limits, notices=notices, neighbours=neighbours)
    config = uvicorn.Config(
        server.app(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=args.shutdown_timeout_s,
        ws="none",
        http=guarded_protocol(Guard(args.read_timeout_s, max_connections, notices, args.max_header_bytes)),
    )
    listener = listener or bound_socket(args.host, args.port, shared=False)
    host, port = listener.getsockname()[:2]
    if max_connections < args.max_connections:
        print(f"{PROG}: at most {max_connections} connections: the file-descriptor limit (ulimit -n) leaves room for "
              "no more", file=sys.stderr)
    # uvicorn re-raises the SIGTERM it handled once it has shut down; a graceful stop is then a normal exit
    signal.signal(signal.SIGTERM, lambda signum, frame: None)

    class Uvicorn(uvicorn.Server):
        interrupted = False

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            # said only now that uvicorn handles the stop signals: one sent on the word is never swallowed
            if ready is None:
                print(f"{PROG}: serving {', '.join(sorted(server.pipelines))} on http://{host}:{port}",
                      file=sys.stderr, flush=True)
            else:
                os.write(ready, b"1")
                os.close(ready)

        def handle_exit(self, sig, frame) -> None:
            server.begin_shutdown(args.shutdown_timeout_s)
            if ready is not None and sig == signal.SIGINT and not self.interrupted:
                # a worker: the terminal's Ctrl-C and the parent's SIGTERM come in either order, and uvicorn
                # takes a SIGINT after a SIGTERM for a second Ctrl-C (a forced stop); only a second SIGINT is one
                self.interrupted, sig = True, signal.SIGTERM
            super().handle_exit(sig, frame)

    Uvicorn(config).run(sockets=[listener])
    if server.model_threads_busy():  # a batch still runs past --shutdown-timeout-s: its answer goes nowhere
        sys.stderr.flush()
        os._exit(0)
    return 0


def run_workers(args: argparse.Namespace) -> int:
    """--workers N: N processes, each with its own pipelines (intra-op threads default to the CPUs / N, widened
    while the others are idle: serving.cores) and its own listening socket on one port (SO_REUSEPORT: the kernel
    spreads connections over them evenly, where one shared socket lets whichever worker wakes first take a burst
    of them all); this process holds the port, forwards SIGTERM/SIGINT to them and exits when they have."""
    with bound_socket(args.host, args.port, listen=False, shared=False) as alone:  # no other server has the port
        port = alone.getsockname()[1]
    held = bound_socket(args.host, port, listen=False)
    host, port = held.getsockname()[:2]
    neighbours = None
    if args.threads is None:
        args.threads = max(1, cpu_count() // args.workers)
        neighbours = Neighbours(args.workers) if args.threads < cpu_count() else None
    read_end, write_end = os.pipe()
    parent, pids = os.getpid(), []
    for worker in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            stop_with(parent)
            if neighbours is not None:
                neighbours.join(worker)
            code = 1
            try:  # every worker loads the same bundles: the first says why they cannot be served, once
                code = guarded(lambda: serve(args, bound_socket(host, port), ready=write_end, neighbours=neighbours),
                               quiet=worker > 0)
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    os.close(write_end)

    interrupted = []

    def forward(signum, frame):
        if signum == signal.SIGINT:
            interrupted.append(signum)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = b""
    while len(started) < args.workers and (chunk := os.read(read_end, 64)):
        started += chunk
    os.close(read_end)
    if len(started) < args.workers:  # a worker failed before serving (it said why): stop the others
        forward(signal.SIGTERM, None)
    else:
        names = sorted(Path(b).resolve().name for b in args.bundles)
        print(f"{PROG}: serving {', '.join(names)} with {args.workers} workers on http://{host}:{port}",
              file=sys.stderr, flush=True)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    if len(started) < args.workers or any(code not in (0, 130) for code in codes):
        return max(max(codes), 1)
    return 130 if interrupted else 0  # Ctrl-C: 130, as with one worker, whichever signal each worker saw first


def stop_with(parent: int) -> None:
    """A worker gets SIGTERM when its parent dies, even killed with SIGKILL (Linux's PR_SET_PDEATHSIG), instead of
    serving on alone and holding the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def bound_socket(host: str, port: int, listen: bool = True, shared: bool = True) -> socket.socket:
    """A TCP socket bound to host and port, listening unless not; shared: the workers' sockets bind it too."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when their proto says TCP; without
        # it every keep-alive answer waits ~40 ms for the client's delayed ACK (Nagle)
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
        if listen:
            listener.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host") from None
    return listener


def main(argv: list[str] | None = None) -> int:
    """The albert-serve command: its exit status."""
    args = parser().parse_args(argv)
    return guarded(lambda: run(args))


def guarded(function: Callable[[], int], quiet: bool = False) -> int:
    """function's exit status; its errors as one albert-serve line (none when quiet) with their exit status."""
    err = open(os.devnull, "w") if quiet else sys.stderr
    try:
        return function()
    except (UsageError, OptionError) as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return 2
    except (AlbertRuntimeError, OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

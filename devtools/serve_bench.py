"""Benchmark albert-serve on loopback against the same requests answered by pipeline() in-process, and against
peers serving the same pipeline (LitServe, Ray Serve, a real Triton), in one run.

    python -m devtools.serve_bench [--task fill-mask|question-answering] [--bundle DIR | --model default|mid]
                                   [--requests N]
                                   [--concurrency 1,8,32] [--workers 1,2] [--peers litserve,ray,triton|none]
                                   [--max-batch-size B] [--threads N] [--long-chars N] [--quick]

Without --bundle, the embedded default model (--model default) or a mid-size one (--model mid: `MID_SIZE`, random
weights, the default's tokenizer and windows; about 6x its compute per token) is exported for --task first (needs
the export extra); requests are fill-mask texts of 4 to 40 words, or the SQuAD sample's questions. Rows: pipeline()
in-process one request at a time (the anchor); where a row has several workers, the same on one intra-op thread, and
N processes of one thread each answering their share at once (what N workers could give without HTTP or gains from
batching: the ceiling); albert-serve at each --workers and concurrency; each peer at each concurrency (LitServe and
Ray Serve through devtools/serve_peers.py, Triton: `--triton-backend python` under tritonserver from
scripts/setup-triton.sh; a peer that is not installed is said and left out). Every server is driven by the same
cheap load client (raw HTTP/1.1 keep-alive over asyncio streams, one connection per client: it costs far less CPU
than httpx, which would otherwise be what is measured). Each row prints throughput, its ratio to the in-process row,
p50/p99 latency, errors, answers equal to in-process, the mean batch (albert-serve: windows per engine run from
/metrics, every worker; Triton: requests per execute()) and CPU milliseconds per request (this process for
in-process, the server's process tree for the servers, from /proc), and beside it the load client's own (this
process's, for the servers' rows: what the client costs the two cores the server also runs on). For
question-answering, --long-chars (default 20000; 0: none) adds the long-request table: one request of that many
characters with doc_stride 121 (thousands of windows) sent to albert-serve while one client sends small requests one
after another; the small requests' latencies are printed. --quick: 32 requests at 1 and 8 clients, one worker, no
peers unless --peers names them, no long request. The figures are for the machine it runs on; the run says which CPU
that is. Publish nothing measured on a machine shared with other jobs.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
TRITON = ROOT / ".triton" / "server" / "pytriton" / "tritonserver"
TRITON_ENV = ROOT / ".triton" / "env"
WORDS = "plants animals water light energy sugar leaves roots soil air sun green".split()
PEERS = ("litserve", "ray", "triton")
LONG_QUESTION = "Who is the narrator?"
LONG_PARAMS = {"doc_stride": 121}
MID_SIZE = dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024)


def texts(count: int) -> list[str]:
    """Fill-mask requests of varied lengths (4 to 40 words), deterministic."""
    out = []
    for i in range(count):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(4 + (i * 13) % 37)]
        words[(i * 5) % len(words)] = "[MASK]"
        out.append(" ".join(words) + ".")
    return out


def requests_for(task: str, count: int) -> list[Any]:
    if task == "fill-mask":
        return texts(count)
    from devtools.bench_pipeline import squad_requests

    questions = squad_requests(10 ** 6)
    return [questions[i % len(questions)] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of pid and every process below it (worker processes, Ray's, Triton's stubs)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def read_body(reader, head: bytes) -> bytes:
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in
                                                            head.decode("latin-1").split("\r\n")[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
            body += await reader.readexactly(size + 2)
            body = body[:-2]
        await reader.readuntil(b"\r\n")
        return body
    return await reader.readexactly(int(headers["content-length"]))


async def http_post(reader, writer, host: str, path: str, body: bytes) -> tuple[int, bytes]:
    writer.write(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n".encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), await read_body(reader, head)


async def load(host: str, port: int, path: str, bodies: list[bytes], concurrency: int, time_limit: float):
    """(status, seconds, raw answer) per body, `concurrency` keep-alive connections; bounded by time_limit."""
    results: list = [None] * len(bodies)
    pending = iter(range(len(bodies)))

    async def client():
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 26)
        try:
            for index in pending:
                started = time.perf_counter()
                status, answer = await http_post(reader, writer, host, path, bodies[index])
                results[index] = (status, time.perf_counter() - started, answer)
        finally:
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    _, late = await asyncio.wait(tasks, timeout=time_limit)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return [r or (0, time_limit, b"") for r in results]


def answer_of(pipe, request: Any) -> Any:
    """pipeline()'s answer as JSON reads it back (a QA request in HF's keyword form, as its warning asks)."""
    from runtime.lines import answer_json  # as the servers write it

    return json.loads(answer_json(pipe(**request) if isinstance(request, dict) else pipe(request)))


def hf_body(request: Any) -> bytes:
    return json.dumps({"inputs": request}).encode()


@dataclass
class Server:
    """A server process under test: how it starts, where a request goes and how its answer reads."""

    label: str
    command: list[str]
    path: str
    ready_path: str
    env: dict[str, str] = field(default_factory=lambda: {**os.environ, "PYTHONPATH": str(ROOT)})
    encode: Callable[[Any], bytes] = hf_body
    decode: Callable[[bytes], Any] = json.loads
    batch: Callable[["Server"], tuple[float, float]] | None = None  # (runs, items) so far
    host: str = "127.0.0.1"
    port: int = 0

    def start(self, log: Path, startup: float = 300.0) -> "Server":
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
                                            start_new_session=True)
        deadline = time.monotonic() + startup
        while self.get(self.ready_path)[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.label} did not start: {tail}")
            time.sleep(0.25)
        return self

    def get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        except OSError:
            return 0, ""
        finally:
            connection.close()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 15)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()


def albert_serve(bundle: Path, args, workers: int, *extra: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "serving.cli", str(bundle), "--port", str(port), "--max-batch-size",
               str(args.max_batch_size), "--max-queue", str(max(256, args.requests)), "--workers", str(workers),
               *threads_of(args), *extra]

    def batches(server: Server) -> tuple[float, float]:
        text = server.get("/metrics")[1]
        return metric_sum(text, "albert_serve_batch_size_count"), metric_sum(text, "albert_serve_batch_size_sum")

    label = "albert-serve, window batching" + (f", --workers {workers}" if workers > 1 else "")
    return Server(label, command, f"/models/{bundle.resolve().name}", "/health", port=port, batch=batches)


def threads_of(args) -> list[str]:
    return ["--threads", str(args.threads)] if args.threads else []


def tritonserver(repository: Path, http_port: int, grpc_port: int, *options: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of scripts/setup-triton.sh's tritonserver serving `repository` on 127.0.0.1,
    strict model configs, no metrics port (the bench's Triton row and tests/test_triton_server.py start it so)."""
    command = [str(TRITON / "bin" / "tritonserver"), "--model-repository", str(repository), "--backend-directory",
               str(TRITON / "backends"), "--strict-model-config", "true", *options, "--http-address", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
               "--allow-metrics", "false"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{TRITON_ENV / 'bin'}:{env.get('PATH', '')}"  # the python backend's stub runs the first python3
    return command, env


def peer(name: str, bundle: Path, args, workers: int, scratch: Path) -> Server:
    port = free_port()
    if name in ("litserve", "ray"):
        command = [sys.executable, "-m", "devtools.serve_peers", name, str(bundle), "--port", str(port),
                   "--workers", str(workers), "--max-batch-size", str(args.max_batch_size), *threads_of(args)]
        label = (f"LitServe, {workers} worker(s), pipeline() per request" if name == "litserve" else
                 f"Ray Serve, {workers} replica(s), @serve.batch")
        return Server(label, command, "/predict" if name == "litserve" else "/", "/health" if name == "litserve"
                      else "/-/healthz", port=port)
    from albert_export.triton import write_repository

    repository = write_repository(bundle, scratch / "triton", backend="python", overwrite=True)
    model = bundle.resolve().name
    command, env = tritonserver(repository, port, free_port())

    def encode(request: Any) -> bytes:
        return json.dumps({"inputs": [{"name": "REQUEST", "shape": [1, 1], "datatype": "BYTES",
                                       "data": [hf_body(request).decode()]}]}).encode()

    def decode(body: bytes) -> Any:
        return json.loads(json.loads(body)["outputs"][0]["data"][0])

    def batches(server: Server) -> tuple[float, float]:
        stats = json.loads(server.get(f"/v2/models/{model}/stats")[1])["model_stats"][0]
        return float(stats["execution_count"]), float(stats["inference_count"])

    return Server("Triton 2.51, --triton-backend python", command, f"/v2/models/{model}/infer", "/v2/health/ready",
                  env=env, encode=encode, decode=decode, batch=batches, port=port)


def peer_missing(name: str) -> str | None:
    if name == "triton":
        return None if (TRITON / "bin" / "tritonserver").exists() else "not installed (bash scripts/setup-triton.sh)"
    import importlib.util

    return None if importlib.util.find_spec(name) else f"not installed (pip install {name})"


def row(label: str, clients: int, seconds: list[float], wall: float, errors: int, equal: int, total: int,
        batch: float | None, cpu_ms: float, anchor: float | None, client_ms: float | None = None) -> tuple[str, float]:
    rate = total / wall
    ratio = f"{rate / anchor:.2f}" if anchor else "1.00"
    shown = "—" if batch is None else f"{batch:.1f}"
    client = "—" if client_ms is None else f"{client_ms:.2f}"
    return (f"| {label} | {clients} | {rate:.1f} | {ratio} | {percentile(seconds, 0.5) * 1000:.1f} | "
            f"{percentile(seconds, 0.99) * 1000:.1f} | {errors} | {equal}/{total} | {shown} | {cpu_ms:.2f} | "
            f"{client} |", rate)


def measure(server: Server, requests: list[Any], expected: list[Any], clients_list: list[int], args,
            anchor: float) -> None:
    bodies = [server.encode(r) for r in requests]
    asyncio.run(load(server.host, server.port, server.path, bodies[:4], 1, 60))  # warm-up
    for clients in clients_list:
        before = server.batch(server) if server.batch else None
        cpu_before = process_tree_cpu_seconds(server.process.pid)
        started, client_before = time.perf_counter(), time.process_time()
        answers = asyncio.run(load(server.host, server.port, server.path, bodies, clients, args.time_limit))
        wall, client = time.perf_counter() - started, time.process_time() - client_before
        cpu = process_tree_cpu_seconds(server.process.pid) - cpu_before
        batch = None
        if before is not None:
            runs, items = (now - then for now, then in zip(server.batch(server), before))
            batch = items / runs if runs else 0.0
        errors = sum(status != 200 for status, _, _ in answers)
        equal = sum(status == 200 and server.decode(answer) == want
                    for (status, _, answer), want in zip(answers, expected))
        line, _ = row(server.label, clients, [s for _, s, _ in answers], wall, errors, equal, len(bodies), batch,
                      cpu * 1000 / len(bodies), anchor, client * 1000 / len(bodies))
        print(line, flush=True)


def long_request_table(bundle: Path, pipe, args, scratch: Path) -> None:
    """One long QA request through albert-serve while one client sends small ones: how long the small ones wait."""
    from devtools.bench_pipeline import long_text

    long = {"question": LONG_QUESTION, "context": long_text(args.long_chars)}
    smalls = requests_for("question-answering", 64)
    expected = [answer_of(pipe, s) for s in smalls]
    server = albert_serve(bundle, args, 1, "--max-windows", "1000000", "--timeout-s", "3600").start(
        scratch / "long.log")
    try:
        asyncio.run(load(server.host, server.port, server.path, [hf_body(smalls[0])], 1, 60))

        async def scenario():
            body = json.dumps({"inputs": long, "parameters": LONG_PARAMS}).encode()
            started = time.perf_counter()
            sending = asyncio.create_task(load(server.host, server.port, server.path, [body], 1, 3600))
            small = []
            while not sending.done():
                index = len(small) % len(smalls)
                status, seconds, answer = (await load(server.host, server.port, server.path,
                                                      [hf_body(smalls[index])], 1, 60))[0]
                small.append((status, seconds, status == 200 and json.loads(answer) == expected[index]))
            (status, _, _), = await sending
            return status, time.perf_counter() - started, small

        runs_before, windows_before = server.batch(server)
        status, long_s, small = asyncio.run(scenario())
        runs, windows = (now - then for now, then in zip(server.batch(server), (runs_before, windows_before)))
    finally:
        server.stop()
    latencies = [s for _, s, _ in small]
    print(f"\nLong request: {args.long_chars} characters, doc_stride {LONG_PARAMS['doc_stride']}; the engine ran "
          f"{int(windows)} windows (the long request's and the small ones') in {int(runs)} batches meanwhile")
    print("| request | status | seconds | small requests meanwhile | small p50 ms | small max ms | small equal |")
    print("|---|---|---|---|---|---|---|")
    print(f"| long QA | {status} | {long_s:.1f} | {len(small)} | {percentile(latencies, 0.5) * 1000:.1f} | "
          f"{max(latencies, default=float('nan')) * 1000:.1f} | {sum(ok for _, _, ok in small)}/{len(small)} |")


def model_bundle(model: str, task: str, work: Path) -> Path:
    """The bundle of the embedded default model, or of a mid-size model of its shape but MID_SIZE's (random
    weights, seed 0), for `task`."""
    from albert_export import export

    checkpoint = None
    if model == "mid":
        import torch
        import transformers

        from albert_export.checkpoint import default_model_dir
        from devtools.bench_pipeline import checkpoint_with_tokenizer
        from runtime.taskspec import TASKS

        config = json.loads((default_model_dir() / "config.json").read_text())
        torch.manual_seed(0)
        architecture = getattr(transformers, TASKS[task].architectures[0])
        hf_model = architecture(transformers.AlbertConfig(**{**config, **MID_SIZE})).eval()
        checkpoint = work / f"checkpoint-{model}"
        hf_model.save_pretrained(checkpoint)
        checkpoint_with_tokenizer(checkpoint)
    return Path(export(checkpoint, task, work / f"{task}-{model}", validate=False, log=lambda message: None))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("fill-mask", "question-answering"), default="fill-mask")
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--model", choices=("default", "mid"), default="default",
                   help="without --bundle: the embedded default model or a mid-size one (MID_SIZE)")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--workers", default=None, help="albert-serve rows per worker count (default 1 and the CPUs)")
    p.add_argument("--peers", default=None, help="litserve,ray,triton or none (default: those installed)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the model (every side)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per server row at most")
    p.add_argument("--long-chars", type=int, default=None, help="the long QA request (default 20000; quick 0)")
    p.add_argument("--quick", action="store_true", help="32 requests at 1 and 8 clients, one worker, no peers")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from runtime import pipeline
    from runtime.arguments import cpu_count
    from runtime.cpu import cpu_description

    if args.quick:
        args.requests, args.concurrency = 32, "1,8"
        args.workers, args.peers = args.workers or "1", args.peers or "none"
    if args.long_chars is None:
        args.long_chars = 0 if args.quick else 20000
    workers = [int(w) for w in (args.workers or f"1,{cpu_count()}").split(",")]
    peers = [] if args.peers == "none" else (args.peers.split(",") if args.peers else list(PEERS))
    clients_list = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        bundle = args.bundle
        if bundle is None:
            bundle = model_bundle(args.model, args.task, scratch)
        pipe = pipeline(bundle, **({"threads": args.threads} if args.threads else {}))
        requests = requests_for(pipe.task, args.requests)
        seconds, expected, wall, cpu = one_by_one(pipe, requests)
        kind = cpu_description()
        print(f"CPU: {kind.get('model', 'unknown')} ({kind.get('kind', '?')}), {cpu_count()} CPUs; load average "
              f"{os.getloadavg()[0]:.1f}; bundle {bundle.resolve().name} ({pipe.task})")
        print("| run | clients | req/s | × in-process | p50 ms | p99 ms | errors | answers equal | mean batch | "
              "CPU ms/request | load client CPU ms/request |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        line, anchor = row("pipeline() in-process, one by one", 1, seconds, wall, 0, len(requests), len(requests),
                           1.0, cpu * 1000 / len(requests), None)
        print(line, flush=True)
        if max(workers) > 1 and not args.threads:
            single_seconds, single_answers, single_wall, single_cpu = one_by_one(pipeline(bundle, threads=1), requests)
            equal = sum(a == b for a, b in zip(single_answers, expected))
            print(row("pipeline() in-process, one by one, 1 intra-op thread", 1, single_seconds, single_wall, 0,
                      equal, len(requests), 1.0, single_cpu * 1000 / len(requests), anchor)[0], flush=True)
            print(row(*processes_at_once(bundle, requests, expected, max(workers)), anchor)[0], flush=True)
        servers = [albert_serve(bundle, args, count) for count in workers]
        for name in peers:
            missing = peer_missing(name)
            if missing:
                print(f"| {name}: {missing} | | | | | | | | | | |", flush=True)
                continue
            servers.append(peer(name, bundle, args, max(workers), scratch))
        for index, server in enumerate(servers):
            try:
                server.start(scratch / f"server-{index}.log")
            except RuntimeError as exc:
                print(f"| {server.label}: {str(exc).splitlines()[0]} | | | | | | | | | | |", flush=True)
                continue
            try:
                measure(server, requests, expected, clients_list, args, anchor)
            finally:
                server.stop()
        if pipe.task == "question-answering" and args.long_chars:
            long_request_table(bundle, pipe, args, scratch)
    return 0


def processes_at_once(bundle: Path, requests: list[Any], expected: list[Any], count: int) -> tuple:
    """row()'s fields for `count` processes, each with its own pipeline on one intra-op thread, answering their
    share of the requests one by one, all at once: what that many server workers could give with no HTTP and
    no gains from batching (the CPUs' shared caches and memory included, which N x one process's rate is not)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results, start = context.Queue(), time.time() + 5 + count  # all load first, then start together

    def share(part: int) -> None:
        from runtime import pipeline

        pipe = pipeline(bundle, threads=1)
        answer_of(pipe, requests[0])
        time.sleep(max(0.0, start - time.time()))
        results.put((part, *one_by_one(pipe, requests[part::count], warm=False)))

    workers = [context.Process(target=share, args=(part,)) for part in range(count)]
    for worker in workers:
        worker.start()
    shares = sorted(results.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join()
    seconds = [s for _, times, _, _, _ in shares for s in times]
    equal = sum(answer == want for part, _, answers, _, _ in shares
                for answer, want in zip(answers, expected[part::count]))
    cpu = sum(cpu for *_, cpu in shares)
    return (f"pipeline() in-process, {count} processes x 1 thread at once", count, seconds,
            max(wall for _, _, _, wall, _ in shares), 0, equal, len(requests), 1.0, cpu * 1000 / len(requests))


def one_by_one(pipe, requests: list[Any], warm: bool = True) -> tuple[list[float], list[Any], float, float]:
    """Each request through pipe in turn (after a warm-up): seconds each, answers, wall and CPU seconds in all."""
    if warm:
        answer_of(pipe, requests[0])
    seconds, answers = [], []
    cpu, started = time.process_time(), time.perf_counter()
    for request in requests:
        t = time.perf_counter()
        answers.append(answer_of(pipe, request))
        seconds.append(time.perf_counter() - t)
    return seconds, answers, time.perf_counter() - started, time.process_time() - cpu


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark albert-serve on loopback against the same requests answered by pipeline() in-process, in one run.

    python -m devtools.serve_bench [--bundle DIR] [--requests N] [--concurrency 1,8,32] [--max-batch-size B]
                                   [--threads N] [--quick]

Without --bundle, the embedded default model is exported as a fill-mask bundle first (needs the export extra).
Rows, in this order: pipeline() in-process one request at a time (the anchor); albert-serve at each
concurrency, driven by a cheap load client (raw HTTP/1.1 keep-alive over asyncio streams, one connection per
client: it costs far less CPU than httpx, which would otherwise be what is measured). Each row prints
throughput, its ratio to the in-process row, p50/p99 latency, errors, answers equal to in-process, the mean
batch (windows per engine run, from /metrics) and CPU milliseconds per request (this process for in-process,
the server process for the server rows, from /proc). --quick: 32 requests at 1 and 8 clients (a smoke run).
The figures are for the machine it runs on; the run says which CPU that is. Publish nothing measured on a
machine shared with other jobs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "plants animals water light energy sugar leaves roots soil air sun green".split()


def texts(count: int) -> list[str]:
    """Fill-mask requests of varied lengths (4 to 40 words), deterministic."""
    out = []
    for i in range(count):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(4 + (i * 13) % 37)]
        words[(i * 5) % len(words)] = "[MASK]"
        out.append(" ".join(words) + ".")
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[-1]) for line in text.splitlines() if line.startswith(name + "{"))


async def http_post(reader, writer, host: str, path: str, body: bytes) -> tuple[int, bytes]:
    writer.write(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n".encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def load(host: str, port: int, path: str, bodies: list[bytes], concurrency: int, time_limit: float):
    """(status, seconds, answer) per body, `concurrency` keep-alive connections; bounded by time_limit."""
    results: list = [None] * len(bodies)
    pending = iter(range(len(bodies)))

    async def client():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index in pending:
                started = time.perf_counter()
                status, answer = await http_post(reader, writer, host, path, bodies[index])
                results[index] = (status, time.perf_counter() - started, json.loads(answer))
        finally:
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    _, late = await asyncio.wait(tasks, timeout=time_limit)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return [r or (0, time_limit, None) for r in results]


class Server:
    def __init__(self, bundle: Path, *args: str):
        command = [sys.executable, "-m", "serving.cli", str(bundle), "--port", "0", *args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, cwd=ROOT,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})
        seen = b""
        while b"serving" not in seen or not seen.endswith(b"\n"):
            ready, _, _ = select.select([self.process.stderr], [], [], 120)
            chunk = os.read(self.process.stderr.fileno(), 65536) if ready else b""
            if not chunk:
                raise SystemExit(f"albert-serve did not start: {seen.decode()}")
            seen += chunk
        line = next(ln for ln in seen.decode().splitlines() if "serving" in ln)
        self.url = line.strip().rsplit(" ", 1)[-1]
        self.host, port = self.url.removeprefix("http://").split(":")
        self.port = int(port)

    def metrics(self) -> str:
        async def get():
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(f"GET /metrics HTTP/1.1\r\nhost: {self.host}\r\nconnection: close\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
            return data.decode().split("\r\n\r\n", 1)[1]

        return asyncio.run(get())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def row(label: str, clients: int, seconds: list[float], wall: float, errors: int, equal: int, total: int,
        batch: float, cpu_ms: float, anchor: float | None) -> tuple[str, float]:
    rate = total / wall
    ratio = f"{rate / anchor:.2f}" if anchor else "1.00"
    return (f"| {label} | {clients} | {rate:.1f} | {ratio} | {percentile(seconds, 0.5) * 1000:.1f} | "
            f"{percentile(seconds, 0.99) * 1000:.1f} | {errors} | {equal}/{total} | {batch:.1f} | {cpu_ms:.2f} |", rate)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the model (both sides)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per server row at most")
    p.add_argument("--quick", action="store_true", help="32 requests at 1 and 8 clients")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.concurrency = 32, "1,8"
    sys.path.insert(0, str(ROOT))
    from runtime import pipeline

    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle
        if bundle is None:
            from albert_export import export

            bundle = Path(export(None, "fill-mask", Path(scratch) / "fill-mask", validate=False))
        name = bundle.resolve().name
        threads = {"threads": args.threads} if args.threads else {}
        pipe = pipeline(bundle, **threads)
        requests = texts(args.requests)
        pipe(requests[0])  # warm-up
        seconds, expected = [], []
        cpu, started = time.process_time(), time.perf_counter()
        for text in requests:
            t = time.perf_counter()
            expected.append(json.loads(json.dumps(pipe(text), default=lambda v: v.item())))
            seconds.append(time.perf_counter() - t)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"CPU: {cpu_name()}, {os.cpu_count()} logical; load average {os.getloadavg()[0]:.1f}; bundle {name}")
        print("| run | clients | req/s | × in-process | p50 ms | p99 ms | errors | answers equal | mean batch | "
              "CPU ms/request |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        line, anchor = row("pipeline() in-process, one by one", 1, seconds, wall, 0, len(requests), len(requests),
                           1.0, cpu * 1000 / len(requests), None)
        print(line, flush=True)
        bodies = [json.dumps({"inputs": t}).encode() for t in requests]
        server_args = ["--max-batch-size", str(args.max_batch_size), "--max-queue", str(max(256, args.requests))]
        server = Server(bundle, *server_args, *(["--threads", str(args.threads)] if args.threads else []))
        try:
            path = f"/models/{name}"
            asyncio.run(load(server.host, server.port, path, bodies[:4], 1, 30))  # warm-up
            for clients in [int(c) for c in args.concurrency.split(",")]:
                before, cpu_before = server.metrics(), process_cpu_seconds(server.process.pid)
                started = time.perf_counter()
                answers = asyncio.run(load(server.host, server.port, path, bodies, clients, args.time_limit))
                wall = time.perf_counter() - started
                cpu = process_cpu_seconds(server.process.pid) - cpu_before
                after = server.metrics()
                batches = metric_sum(after, "albert_serve_batch_size_count") - metric_sum(
                    before, "albert_serve_batch_size_count")
                windows = metric_sum(after, "albert_serve_batch_size_sum") - metric_sum(
                    before, "albert_serve_batch_size_sum")
                errors = sum(status != 200 for status, _, _ in answers)
                equal = sum(answer == want for (_, _, answer), want in zip(answers, expected))
                line, _ = row("albert-serve, window batching", clients, [s for _, s, _ in answers], wall, errors,
                              equal, len(bodies), windows / batches if batches else 0.0,
                              cpu * 1000 / len(bodies), anchor)
                print(line, flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

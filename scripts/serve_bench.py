"""Benchmark albert-serve on loopback against the same requests answered one by one by pipeline() in-process.

    python scripts/serve_bench.py [--bundle DIR] [--requests N] [--concurrency 1,8,32] [--max-batch-size B]

Without --bundle, the embedded default model is exported as a fill-mask bundle first. One run measures, in this
order: pipeline() in-process, one request at a time (the anchor); the same requests in-process in batches
(what batching can gain without HTTP); albert-serve with dynamic batching at each
concurrency; albert-serve with --max-batch-size 1 (no batching) at the highest concurrency. Each server run is a
bounded client (serving.loadgen: N requests, 120 s at most) after a warm-up; every answer is compared with the
in-process one. Prints a Markdown table: throughput, p50/p99 latency, errors, answers equal, mean batch size and
the server's resident memory (VmRSS) before and after the run.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving import loadgen  # noqa: E402

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
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[-1]) for line in text.splitlines() if line.startswith(name + "{"))


class Server:
    def __init__(self, bundle: Path, *args: str):
        command = [sys.executable, "-m", "serving.cli", str(bundle), "--port", "0", *args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = self.process.stderr.readline()
        if "serving" not in line:
            raise SystemExit(f"albert-serve did not start: {line}{self.process.stderr.read()}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", trust_env=False).text

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def serve_run(server: Server, name: str, bodies: list, expected: list, concurrency: int) -> dict:
    url = f"{server.url}/models/{name}"
    loadgen.run(url, bodies[: max(concurrency, 8)], concurrency)  # warm-up
    before, rss_before = server.metrics(), rss_mb(server.process.pid)
    started = time.perf_counter()
    answers = loadgen.run(url, bodies, concurrency, time_limit=120)
    seconds = time.perf_counter() - started
    after = server.metrics()
    batches = metric_sum(after, "albert_serve_batch_size_count") - metric_sum(before, "albert_serve_batch_size_count")
    inputs = metric_sum(after, "albert_serve_batch_size_sum") - metric_sum(before, "albert_serve_batch_size_sum")
    latencies = [a.seconds for a in answers if a.status == 200]
    return {
        "throughput": len(bodies) / seconds,
        "p50": percentile(latencies, 0.5) * 1000 if latencies else float("nan"),
        "p99": percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
        "errors": sum(a.status != 200 for a in answers),
        "equal": sum(a.status == 200 and a.body == e for a, e in zip(answers, expected)),
        "batch": inputs / batches if batches else float("nan"),
        "rss": (rss_before, rss_mb(server.process.pid)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    import json

    from runtime import pipeline

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        bundle = args.bundle
        if bundle is None:
            from albert_export import export

            bundle = Path(export(None, "fill-mask", Path(scratch) / "fill-mask", validate=False))
        name = bundle.resolve().name
        requests = texts(args.requests)
        bodies = [{"inputs": t} for t in requests]
        threads = ["--threads", str(args.threads)] if args.threads else []
        pipe = pipeline(bundle, **({"threads": args.threads} if args.threads else {}))
        for text in requests[:8]:
            pipe(text)  # warm-up
        latencies, expected = [], []
        started = time.perf_counter()
        for text in requests:
            t0 = time.perf_counter()
            expected.append(pipe(text))
            latencies.append(time.perf_counter() - t0)
        anchor_seconds = time.perf_counter() - started
        expected = json.loads(json.dumps(expected, default=lambda v: v.item()))
        rows = [("pipeline() in-process, one by one", 1, {
            "throughput": len(requests) / anchor_seconds, "p50": percentile(latencies, 0.5) * 1000,
            "p99": percentile(latencies, 0.99) * 1000, "errors": 0, "equal": len(requests), "batch": 1.0,
            "rss": (float("nan"), float("nan")),
        })]
        started = time.perf_counter()
        batched = [r for i in range(0, len(requests), args.max_batch_size)
                   for r in pipe.run_each(requests[i: i + args.max_batch_size])]
        batched_seconds = time.perf_counter() - started
        rows.append((f"pipeline().run_each in-process, batches of {args.max_batch_size}", 1, {
            "throughput": len(requests) / batched_seconds, "p50": float("nan"), "p99": float("nan"), "errors": 0,
            "equal": sum(a == e for a, e in zip(json.loads(json.dumps(batched, default=lambda v: v.item())), expected)),
            "batch": float(args.max_batch_size), "rss": (float("nan"), float("nan")),
        }))
        del pipe

        server = Server(bundle, "--max-batch-size", str(args.max_batch_size), "--max-delay-ms", str(args.max_delay_ms),
                        *threads)
        try:
            for level in levels:
                rows.append((f"albert-serve, batching (max {args.max_batch_size})", level,
                             serve_run(server, name, bodies, expected, level)))
        finally:
            server.stop()
        server = Server(bundle, "--max-batch-size", "1", "--max-delay-ms", "0", *threads)
        try:
            rows.append(("albert-serve, no batching (max 1)", levels[-1],
                         serve_run(server, name, bodies, expected, levels[-1])))
        finally:
            server.stop()

    anchor = rows[0][2]["throughput"]
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{len(requests)} fill-mask requests ({name}), {cpu_name()}, {os.cpu_count()} CPUs, load average {load} "
          f"(1/5/15 min) at the end, one run\n")
    print("| runs | clients | req/s | × in-process | p50 ms | p99 ms | errors | answers equal | mean batch "
          "| server RSS MB (before → after) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, level, r in rows:
        rss = "—" if r["rss"][0] != r["rss"][0] else f"{r['rss'][0]:.0f} → {r['rss'][1]:.0f}"
        p50, p99 = ("—", "—") if r["p50"] != r["p50"] else (f"{r['p50']:.1f}", f"{r['p99']:.1f}")
        print(f"| {label} | {level} | {r['throughput']:.1f} | {r['throughput'] / anchor:.2f} | {p50} "
              f"| {p99} | {r['errors']} | {r['equal']}/{len(requests)} | {r['batch']:.1f} | {rss} |")
    batched = next(r for label, level, r in rows if "batching (max" in label and level == levels[-1])
    unbatched = rows[-1][2]
    print(f"\nbatching gain at {levels[-1]} clients: {batched['throughput'] / unbatched['throughput']:.2f}× "
          f"the throughput of the same server with --max-batch-size 1")
    failed = any(r["errors"] or r["equal"] != len(requests) for _, _, r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

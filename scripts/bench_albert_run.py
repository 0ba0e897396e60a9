"""albert-run's input loop: file throughput and time to the first answer, before (fixed 64-line chunks) and after
(runtime.lines: lines batched as they are ready), measured in the same run.

    python scripts/bench_albert_run.py [BUNDLE] [--lines 2000] [--rounds 3]

Without BUNDLE a tiny random fill-mask bundle is built (needs torch; see tests/handmade.py). Prints a table.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import pipeline  # noqa: E402
from runtime.lines import MAX_BATCH, LineRunner, byte_reader  # noqa: E402


def chunked_before(pipe, stream, out) -> None:
    """The loop albert-run had: text lines, 64 (or --batch-size) at a time, each chunk answered together."""
    chunk = []
    for line in stream:
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) == max(MAX_BATCH, pipe.runner.batch_size):
            for result in pipe.run_each(chunk):
                out.write(json.dumps(result) + "\n")
            chunk = []
    for result in pipe.run_each(chunk) if chunk else []:
        out.write(json.dumps(result) + "\n")


def ready_after(pipe, stream, out) -> None:
    LineRunner(pipe, {}, False, out, io.StringIO()).run(byte_reader(stream))


class FirstAnswer(io.StringIO):
    """stdout that remembers when the first answer was written."""

    def __init__(self):
        super().__init__()
        self.first = None

    def write(self, text):
        if self.first is None:
            self.first = time.perf_counter()
        return super().write(text)


def file_seconds(loop, pipe, path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as raw, open(path, encoding="utf-8") as text:
        loop(pipe, raw if loop is ready_after else text, io.StringIO())
    return time.perf_counter() - start


def first_answer_from_slow_producer(loop, pipe, line: str, count: int = 20, gap: float = 0.05) -> float:
    """Seconds from the first line written to its answer, when a producer writes one line every `gap` s."""
    read_fd, write_fd = os.pipe()
    start = {}

    def produce():
        with os.fdopen(write_fd, "wb", buffering=0) as pipe_out:
            for i in range(count):
                if i == 0:
                    start["t"] = time.perf_counter()
                pipe_out.write((line + "\n").encode())
                time.sleep(gap)

    producer = threading.Thread(target=produce)
    producer.start()
    out = FirstAnswer()
    with os.fdopen(read_fd, "rb") as raw:
        loop(pipe, raw if loop is ready_after else io.TextIOWrapper(raw, encoding="utf-8"), out)
    producer.join()
    return out.first - start["t"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?")
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-albert-run-"))
    bundle = args.bundle
    if bundle is None:
        from tests.handmade import make_bundle

        bundle = make_bundle(work / "fill-mask", "fill-mask")
    pipe = pipeline(bundle)
    line = "Plants create [MASK] through photosynthesis."
    source = work / "lines.txt"
    source.write_text("".join(f"{line} {i}\n" for i in range(args.lines)), encoding="utf-8")
    print(f"bundle {bundle}, {args.lines} lines, median of {args.rounds}, CPU: {os.cpu_count()} cores\n")
    print("| loop | file: lines/s | ratio | slow pipe (1 line / 50 ms): first answer after |")
    print("|---|---|---|---|")
    loops = {"before: fixed 64-line chunks": chunked_before, "after: lines as they are ready": ready_after}
    file_seconds(ready_after, pipe, source)  # warm-up
    times = {name: [] for name in loops}
    for _ in range(args.rounds):  # interleaved, so load from other processes hits both alike
        for name, loop in loops.items():
            times[name].append(file_seconds(loop, pipe, source))
    anchor = None
    for name, loop in loops.items():
        rate = args.lines / statistics.median(times[name])
        anchor = anchor or rate
        latency = first_answer_from_slow_producer(loop, pipe, line)
        print(f"| {name} | {rate:.0f} | {rate / anchor:.2f} | {latency * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a process holds in memory: the benchmark's and tests/test_memory.py's probes read it the same way."""
from __future__ import annotations


def resident_mb() -> float:
    """This process's resident memory (VmRSS), in MiB."""
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024

"""Write one benchmark's section of bench/RESULTS.md, leaving the other sections alone."""

from __future__ import annotations

import os
import platform
import re
import resource
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's ``VmHWM`` (the high-water mark of this process's own memory since it started its program), not
    ``getrusage``'s ``ru_maxrss``: Linux carries ``ru_maxrss`` over from the parent across fork and exec, so a child
    started by a bench that had just generated gigabytes of frames would report the parent's size as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux ``/proc/stat``; 0.0 elsewhere): the
    difference across a step counts the work of the processes it uses (a database server) as well as its own,
    on a machine that is otherwise quiet."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def write_section(heading: str, body: str) -> None:
    """Replace (or append) the ``## heading`` section of RESULTS.md with ``body``."""
    header = "# Benchmark results\n\nMedians of repeated runs; see each section's command.\n"
    text = RESULTS.read_text() if RESULTS.exists() else header
    section = f"## {heading}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")

"""Compare one data set build task between two revisions of the code, in interleaved pairs on the same machine.

``python -m bench.dataset_pair --before REV --records FILE_OR_URL [--records-before FILE_OR_URL] [--rounds 2]``

Why: this machine's speed differs from day to day (the same code's validate step took 48% longer on one day than
the day before), so figures from two days do not compare; a change's effect is measured against the code before
it, alternating the two in the same hour. Each round runs the primary ``build_validate_write`` of September 2026
(read, build, validate, write, report: the DAG task's work, as :mod:`bench.monthly_dataset_db` runs it) once with
``REV``'s ``include/`` (checked out in a temporary git worktree) and once with this checkout's, each in a fresh
process. ``--records-before``: the records the old code reads, when the change is to the records schema (a file
written by the old revision's ``bench.monthly_dataset_db``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Run in the child: one primary build_validate_write against the records named in argv[1]; prints JSON.
CHILD = """
import json, sys, tempfile, time
from pathlib import Path
from caldicott.dataset import pipeline
from caldicott.dataset.builder import Period
from caldicott.dataset.writer import load_key, new_key
from caldicott.db import make_engine, sqlite_url
from caldicott.state.migrate import migrate
work = Path(tempfile.mkdtemp())
state = make_engine(sqlite_url(work / "state.db"))
migrate(state)
s = pipeline.Settings(work_dir=work / "out", key=load_key(new_key()), org_provider="ZZZ01", provider_name="bench")
rec = sys.argv[1]
eng = make_engine(rec) if "://" in rec else make_engine(sqlite_url(Path(rec)), readonly=True)
w, c = time.perf_counter(), time.process_time()
res = pipeline.build_validate_write(eng, state, Period.month(2026, 9), s, "primary")
out = {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c, **res["timing_s"]}
with open("/proc/self/status") as f:
    out["peak_mib"] = next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmHWM"))
print(json.dumps(out))
"""


def run(include: Path, records: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, records], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(include), "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision of the code before the change")
    p.add_argument("--records", required=True, help="records file (SQLite) or PostgreSQL URL the new code reads")
    p.add_argument("--records-before", help="what the old code reads (default: --records)")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        old = Path(d) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), a.before], check=True)
        try:
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(a.rounds):
                runs["before"].append(run(old / "include", a.records_before or a.records))
                runs["after"].append(run(ROOT / "include", a.records))
                print(json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "cpu_s", "read_s", "peak_mib")}
           for k, v in runs.items()}
    walls = {k: ", ".join(f"{r['wall_s']:.1f}" for r in v) for k, v in runs.items()}
    print(f"before {a.before}: {walls['before']} s; after: {walls['after']} s; "
          f"ratio {med['before']['wall_s'] / med['after']['wall_s']:.2f}x; read {med['before']['read_s']:.1f} -> "
          f"{med['after']['read_s']:.1f} s; CPU {med['before']['cpu_s']:.1f} -> {med['after']['cpu_s']:.1f} s; "
          f"peak {med['before']['peak_mib']:,.0f} -> {med['after']['peak_mib']:,.0f} MiB")


if __name__ == "__main__":
    main()

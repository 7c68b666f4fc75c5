"""``make bench``: run every benchmark module in bench/ (each writes its section of RESULTS.md).

Pass module names to run some: ``python -m bench.run_all records_synth dag_parse``.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

SKIP = {"__init__", "results", "run_all"}


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    names = argv or sorted(m.name for m in pkgutil.iter_modules([str(here)])
                           if m.name not in SKIP and not m.name.startswith("_") and not m.name.startswith("reference"))
    failed = []
    for name in names:
        print(f"== bench.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=here.parent, check=False).returncode:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

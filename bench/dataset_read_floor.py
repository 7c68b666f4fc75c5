"""How fast could any reader take a month out of a SQLite records file? The floor under the data set's read.

``python -m bench.dataset_read_floor RECORDS_FILE [--rounds 2]``

Why: the monthly data set's build spends most of its time reading the records file. This captures the SQL that
``builder.read_source`` runs for September 2026 (bound values rendered as literals) and times the ``sqlite3``
command-line shell running it with its output thrown away: SQLite's own work plus C text formatting, no Python
object at all, which no reader through SQLite can beat. Beside it, ``read_source`` itself on the same file, in
alternating rounds. Needs the ``sqlite3`` shell (Debian package ``sqlite3``). Records file: one written by
:func:`bench.monthly_dataset_db.make_db`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def statements(records: Path) -> list[str]:
    """The SQL of every read ``read_source`` makes, as SQLite would run it."""
    from caldicott.dataset import builder
    from caldicott.dataset.builder import Period
    from caldicott.db import make_engine, sqlite_url

    engine = make_engine(sqlite_url(records), readonly=True)
    captured: list[str] = []
    plain = builder._read

    def capture(eng, query, *args, **kwargs):
        captured.append(str(query.compile(eng, compile_kwargs={"literal_binds": True})).replace("\n", " "))
        return plain(eng, query, *args, **kwargs)

    builder._read = capture
    try:
        builder.read_source(engine, Period.month(2026, 9))
    finally:
        builder._read = plain
    return captured


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("records", type=Path)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    shell = shutil.which("sqlite3")
    if shell is None:
        sys.exit("the sqlite3 shell is needed (apt-get install sqlite3)")
    script = ".output /dev/null\n" + "".join(f"{s};\n" for s in statements(a.records))
    floor, ours = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        subprocess.run([shell, "-readonly", str(a.records)], input=script, text=True, check=True)
        floor.append(time.perf_counter() - t0)
        out = subprocess.run([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                              "from caldicott.dataset.builder import Period, read_source; "
                              "from caldicott.db import make_engine, sqlite_url; "
                              "e = make_engine(sqlite_url(Path(sys.argv[1])), readonly=True); "
                              "t = time.perf_counter(); read_source(e, Period.month(2026, 9)); "
                              "print(time.perf_counter() - t)", str(a.records)],
                             check=True, capture_output=True, text=True)
        ours.append(float(out.stdout.strip().splitlines()[-1]))
    print(f"{len(script.splitlines()) - 1} statements; sqlite3 shell, output discarded: "
          f"{', '.join(f'{x:.2f}' for x in floor)} s (median {statistics.median(floor):.2f}); read_source: "
          f"{', '.join(f'{x:.2f}' for x in ours)} s (median {statistics.median(ours):.2f}); "
          f"ours / floor {statistics.median(ours) / statistics.median(floor):.2f}x")


if __name__ == "__main__":
    main()

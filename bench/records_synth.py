"""Benchmark: the synthetic generator at 100,000 patients (issue 2: "well under a minute").

``python -m bench.records_synth [--patients N] [--repeat R]`` — generates and writes to a fresh SQLite
file R times; reports the median of each stage and peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from caldicott.db import make_engine, sqlite_url
from caldicott.records import synth

from bench.results import machine, peak_rss_mib, write_section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    gen, wr, counts = [], [], {}
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            result = synth.generate(args.patients, seed=7 + i)
            t1 = time.perf_counter()
            synth.write(result, make_engine(sqlite_url(Path(d) / "records.db")))
            t2 = time.perf_counter()
            gen.append(t1 - t0)
            wr.append(t2 - t1)
            counts = {k: len(v) for k, v in result.frames.items()}
    rows = sum(counts.values())
    body = f"""Command: `python -m bench.records_synth --patients {args.patients} --repeat {args.repeat}` ({machine()}).

| stage | median s |
|---|---|
| generate (numpy/pandas) | {statistics.median(gen):.1f} |
| write to SQLite | {statistics.median(wr):.1f} |
| **total** | **{statistics.median([a + b for a, b in zip(gen, wr, strict=True)]):.1f}** |

{rows:,} rows ({", ".join(f"{k} {v:,}" for k, v in counts.items())}); peak RSS {peak_rss_mib():,.0f} MiB.
Practice certificates are not generated here (they are cached per keys folder in the demo)."""
    write_section("Synthetic records (issue 2)", body)
    print(body)


if __name__ == "__main__":
    main()

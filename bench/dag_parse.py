"""DAG parse time: how long each DAG file takes to import, as the dag-processor would import it.

``python -m bench.dag_parse [--repeat 5]`` runs, for each ``dags/*.py``, a fresh interpreter with
``include/`` and ``plugins/`` on the path, preloads what a running dag-processor has loaded (the DagBag
and the task SDK's definitions), then times ``runpy.run_path`` of the file: the file's own cost (its own
imports, ``caldicott_airflow`` modules included, and building the DAG), which the conventions keep under
0.3 s. It also records the cold wall time of the whole interpreter and the time to fill a ``DagBag``
over the folder. Medians of ``--repeat`` runs go under "## DAG parse time" in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"

FILE_PROBE = """
import json, runpy, sys, time
# preloaded, as in a running dag-processor: the DagBag machinery and the task SDK's (lazy) definitions
import airflow.dag_processing.dagbag  # noqa: F401
from airflow.sdk import DAG, BaseNotifier, DeadlineAlert, Param, dag, task  # noqa: F401
t0 = time.perf_counter()
runpy.run_path(sys.argv[1], run_name="dag_parse_bench")
print(json.dumps({"file_s": time.perf_counter() - t0}))
"""

BAG_PROBE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"bag_s": time.perf_counter() - t0, "dags": len(bag.dags), "errors": len(bag.import_errors)}))
"""


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
    env.update({"PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT / "plugins")]),
                "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})
    return env


def _run(probe: str, arg: str, env: dict[str, str], cwd: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", probe, arg], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=600, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{arg}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1]), wall


def measure(repeat: int) -> dict:
    files = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
    out: dict = {"files": {}, "repeat": repeat}
    with tempfile.TemporaryDirectory() as home:
        env = _env(Path(home))
        for path in files:
            own, cold = [], []
            try:
                for _ in range(repeat):
                    data, wall = _run(FILE_PROBE, str(path), env, home)
                    own.append(data["file_s"])
                    cold.append(wall)
            except RuntimeError:
                out["files"][path.name] = {"error": True}
                continue
            out["files"][path.name] = {"file_s": statistics.median(own), "cold_s": statistics.median(cold)}
        bag = [_run(BAG_PROBE, str(DAGS), env, home)[0] for _ in range(repeat)]
    out["bag_s"] = statistics.median(b["bag_s"] for b in bag)
    out["dags"] = bag[-1]["dags"]
    out["errors"] = bag[-1]["errors"]
    out["load"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    out["total_file_s"] = sum(f.get("file_s", 0.0) for f in out["files"].values())
    return out


def report(r: dict) -> str:
    rows = "\n".join(f"| {name} | {f['file_s']:.3f} | {f['cold_s']:.2f} |" if "file_s" in f
                     else f"| {name} | import error | |" for name, f in r["files"].items())
    return (f"Command: `python -m bench.dag_parse --repeat {r['repeat']}` ({machine()}); median of "
            f"{r['repeat']} runs, each in a fresh interpreter.\n\n"
            "| DAG file | own import s (Airflow preloaded) | cold interpreter s |\n|---|---|---|\n"
            f"{rows}\n| **total** | **{r['total_file_s']:.3f}** | |\n\n"
            f"`DagBag` over dags/ (one process, airflow preloaded): {r['bag_s']:.2f} s for {r['dags']} DAGs, "
            f"{r['errors']} import errors. Budget per file (docs/CONVENTIONS.md): 0.3 s own import. "
            f"Load average during the run: {r['load']} (shared machine: compare runs on a quiet one).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    r = measure(args.repeat)
    body = report(r)
    print(body)
    if not args.no_write:
        write_section("DAG parse time", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``make demo``: seed, start the stand-in peers and a real Airflow on loopback, run every DAG, summarise.

Each DAG runs through the real scheduler (LocalExecutor), triggered over the REST API like a person or
another system would; human steps are answered over the same API as a service manager would answer
them in the UI. Safe to re-run: the records are re-seeded only when asked for a new size or seed, and
every flow is idempotent, so a second run reports what the first already delivered.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
import time
from dataclasses import dataclass, field

from devtools import demos, peers
from devtools.airflow_env import free_port
from devtools.bootstrap import DEMO_PATIENTS, DEMO_SEED, Workspace, prepare
from devtools.leakscan import scan
from devtools.paths import AIRFLOW_HOME, DEMO
from devtools.stack import AirflowStack

log = logging.getLogger("devtools.demo")


@dataclass
class DemoContext:
    stack: AirflowStack
    workspace: Workspace
    peers: dict[str, object] = field(default_factory=dict)


def demo_modules(only: list[str] | None = None):
    mods = [importlib.import_module(f"{demos.__name__}.{m.name}") for m in pkgutil.iter_modules(demos.__path__)]
    mods = [m for m in mods if hasattr(m, "run") and (not only or m.DAG_ID in only)]
    return sorted(mods, key=lambda m: m.ORDER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every Caldicott DAG end to end on synthetic data")
    parser.add_argument("--patients", type=int, default=DEMO_PATIENTS)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--only", nargs="*", help="DAG ids to run (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ws = Workspace(DEMO)
    t0 = time.monotonic()
    started = peers.start_all_for_demo(ws.root / "peers")
    summary: dict[str, dict] = {}
    ok = True
    try:
        extra: dict[str, str] = {}
        for p in started:
            extra.update(p.airflow_env())
        env = prepare(ws, AIRFLOW_HOME, patients=args.patients, seed_value=args.seed, api_port=free_port(),
                      extra=extra)
        with AirflowStack(env) as stack:
            ctx = DemoContext(stack=stack, workspace=ws, peers={p.name: p for p in started})
            for mod in demo_modules(args.only):
                log.info("running %s ...", mod.DAG_ID)
                summary[mod.DAG_ID] = result = mod.run(ctx)
                ok &= result.get("state") == "success"
    finally:
        for p in started:
            p.stop()
    print("\n=== Caldicott demo summary ===")
    for dag_id, result in summary.items():
        print(f"{dag_id}: {json.dumps(result, default=str)}")
    print(f"records source : {ws.records_db}  (manifest of deliberately bad ids: {ws.manifest})")
    print(f"state database : {ws.state_db}  (ledger, quarantine, registers)")
    print(f"outputs        : {ws.outputs}")
    print(f"airflow home   : {AIRFLOW_HOME}  (task logs under logs/)")
    print("browse the UI  : make up, then open the address it prints; passwords in .airflow/passwords.json")
    leaks = scan(ws.records_db, AIRFLOW_HOME)
    print(f"patient-data scan of Airflow metadata and task logs: {leaks.values_searched} values searched in "
          f"{leaks.sources} sources, {len(leaks.hits)} found")
    ok &= not leaks.hits
    print(f"took {time.monotonic() - t0:.0f}s; {'all runs succeeded' if ok else 'SOME RUNS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

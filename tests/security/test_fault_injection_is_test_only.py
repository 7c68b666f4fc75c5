"""Fault injection is a test-side switch (issue 14): nothing in dags/, plugins/ or include/ can crash a send.

The crash-safety tests still crash real task processes, through ``tests/e2e/worker_site/sitecustomize.py``;
this checks that hook here, in a plain subprocess with the environment Airflow gives a task process, so a
regression shows in seconds rather than only in the e2e run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import faults

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = ("dags", "plugins", "include")
SWITCHES = re.compile(r"fault_after|CrashAfter|InjectedFault|transport\.faults|CALDICOTT_E2E_FAULTS|worker_site"
                      r"|CALDICOTT_DEADLINES|dagtest_site")   # test-only switches: tests/ and devtools/ only


def test_no_fault_switch_in_deployed_code():
    found = [f"{p.relative_to(ROOT)}:{n}" for d in DEPLOYED for p in sorted((ROOT / d).rglob("*.py"))
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if SWITCHES.search(line)]
    assert found == []
    assert not (ROOT / "include" / "caldicott" / "transport" / "faults.py").exists()


SCRIPT = textwrap.dedent("""
    import json, sys
    from caldicott import gateway
    from caldicott.db import make_engine, sqlite_url
    from caldicott.policy.evidence import establish
    from caldicott.policy.purposes import Protection, Purpose
    from caldicott.state.migrate import migrate
    from caldicott.transport.base import Outbound
    from caldicott.transport.ledger import Intent, Ledger, item_id

    class Peer:
        channel, reconcilable, concurrency = "test", False, 1
        def __init__(self): self.got = []
        def send(self, item): self.got.append(item.item_id); return "ref"
        def already_delivered(self, item): return None

    engine = make_engine(sqlite_url(sys.argv[1]))
    migrate(engine)
    items = [Outbound(item_id("gp_letters", f"R{n}", "assessment", "Z84001"), Purpose.GP_LETTER, "Z84001", "test",
                      b"x", Protection.SMIME, facts={"gp_sharing_consent": establish("gp_sharing_consent", b"x")})
             for n in range(5)]
    Ledger(engine).record_intent(Intent(i.item_id, "gp_letters", str(i.purpose), "k", i.recipient, i.channel)
                                 for i in items)
    peer = Peer()
    try:
        gateway.release(items, peer, engine)
        crash = None
    except BaseException as exc:
        crash = type(exc).__name__
    states = sorted(Ledger(engine).counts("gp_letters").items())
    print(json.dumps({"wrapped": hasattr(gateway.release, "__wrapped__"), "sent": len(peer.got), "crash": crash,
                      "states": states}))
""")


def _run(tmp_path: Path, name: str, env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", faults.CONTROL_ENV))}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "include"), str(ROOT)])
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"{name}.db")], env={**base, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


TASK = {"AIRFLOW_CTX_DAG_ID": "gp_letters", "AIRFLOW_CTX_TASK_ID": "send_batch",
        "AIRFLOW_CTX_DAG_RUN_ID": "crash_run", "AIRFLOW_CTX_TRY_NUMBER": "1"}


@pytest.mark.slow
def test_worker_hook_crashes_only_the_armed_task_after_n_sends(tmp_path):
    control = tmp_path / "faults.json"
    env = faults.e2e_airflow_env({"PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT)])}, control)

    # on the path and switched on, but not armed: the real release, untouched
    idle = _run(tmp_path, "idle", {**env, **TASK})
    assert idle["wrapped"] is True and idle["sent"] == 5 and idle["crash"] is None

    faults.arm(control, dag_id="gp_letters", task_id="send_batch", run_id="crash_run", after_sends=2)
    other = _run(tmp_path, "other", {**env, **TASK, "AIRFLOW_CTX_DAG_RUN_ID": "another_run"})
    assert other["sent"] == 5 and other["crash"] is None and faults.fired(control) == []

    hit = _run(tmp_path, "hit", {**env, **TASK})
    assert hit["sent"] == 2 and hit["crash"] == "AirflowFailException"
    assert dict(hit["states"]) == {"sent": 2, "sending": 3}   # the claimed chunk, as a crashed worker leaves it
    (entry,) = faults.fired(control)
    assert entry["run_id"] == "crash_run" and entry["try_number"] == "1" and entry["channel"] == "test"

    # without the e2e environment (the demo, a deployment) the hook is not even on the path
    plain = _run(tmp_path, "plain", TASK)
    assert plain["wrapped"] is False and plain["sent"] == 5

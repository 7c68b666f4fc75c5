"""``make up``: the demo's data, the stand-in peers and a real Airflow on 127.0.0.1, to click around.

Unlike ``airflow standalone`` nothing listens beyond loopback and the password file is private (0600).
Ctrl-C stops everything this started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

from devtools import peers
from devtools.airflow_env import passwords
from devtools.bootstrap import Workspace, prepare, seed
from devtools.paths import AIRFLOW_HOME, DEMO
from devtools.stack import AirflowStack

log = logging.getLogger("devtools.up")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ws = Workspace(DEMO)
    port = int(os.environ.get("CALDICOTT_UI_PORT", "8080"))
    seed(ws)   # first: the peers serve the organisations in the records (devtools/providers.py)
    started = peers.start_all_for_demo(ws.root / "peers", records_db=ws.records_db)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        extra: dict[str, str] = {}
        for p in started:
            extra.update(p.airflow_env())
        env = prepare(ws, AIRFLOW_HOME, api_port=port, extra=extra)
        with AirflowStack(env):
            users = ", ".join(passwords(AIRFLOW_HOME))
            print(f"\nAirflow UI: http://127.0.0.1:{port}  users: {users}")
            print(f"passwords:  {AIRFLOW_HOME / 'passwords.json'} (readable by you only)")
            print("Ctrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
    finally:
        for p in started:
            p.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

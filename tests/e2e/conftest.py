"""One real Airflow for the end-to-end tests: api-server, scheduler, dag-processor and triggerer on
loopback (LocalExecutor, SQLite metadata), with every stand-in peer of ``devtools/peers`` running and
a seeded synthetic records source. Started once per test session (about 40 s), stopped at the end.
"""

from __future__ import annotations

import pytest

from devtools import peers
from devtools.airflow_env import free_port
from devtools.bootstrap import Workspace, prepare
from devtools.demo import DemoContext
from devtools.stack import AirflowStack
from tests import faults

E2E_PATIENTS, E2E_SEED = 400, 5


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> DemoContext:
    root = tmp_path_factory.mktemp("e2e")
    ws = Workspace(root / "workspace")
    started = peers.start_all_for_demo(ws.root / "peers")
    try:
        extra: dict[str, str] = {}
        for p in started:
            extra.update(p.airflow_env())
        env = prepare(ws, root / "airflow", patients=E2E_PATIENTS, seed_value=E2E_SEED, api_port=free_port(),
                      extra=extra)
        # this Airflow only: the test-side fault switch (tests/faults.py), inert until a test arms it
        env = faults.e2e_airflow_env(env, root / "faults.json")
        with AirflowStack(env) as stack:
            yield DemoContext(stack=stack, workspace=ws, peers={p.name: p for p in started})
    finally:
        for p in started:
            p.stop()

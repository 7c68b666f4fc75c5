"""One real Airflow for the end-to-end tests: api-server, scheduler, dag-processor and triggerer on
loopback (LocalExecutor, SQLite metadata), with every stand-in peer of ``devtools/peers`` running and
a seeded synthetic records source. Started once per test session (about 40 s), stopped at the end.

The tests of this tier share that one Airflow and its state database, and some build on what an earlier one
left (``test_gp_letters``: the non-delivery report follows the October run; ``test_zz_no_patient_data_in_airflow``
scans everything the others wrote, so it must come last). So when the suite runs in random order (pytest-randomly,
``make test``), this tier alone keeps its file order, after the shuffled others: see
:func:`pytest_collection_modifyitems`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.state.migrate import verify

from devtools import peers
from devtools.airflow_env import free_port
from devtools.bootstrap import Workspace, prepare, seed
from devtools.demo import DemoContext
from devtools.stack import AirflowStack
from tests import faults

E2E_PATIENTS, E2E_SEED = 400, 5
E2E_DIR = Path(__file__).resolve().parent


def _is_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(item.path).resolve().parents


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_collection_modifyitems(config, items):
    """After any shuffle: this tier's tests last, in file order (module name, then line), the others as shuffled."""
    result = yield
    e2e = [item for item in items if _is_e2e(item)]
    if e2e:
        others = [item for item in items if not _is_e2e(item)]
        items[:] = others + sorted(e2e, key=lambda item: (str(item.path), item.location[1] or 0))
    return result


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> DemoContext:
    root = tmp_path_factory.mktemp("e2e")
    ws = Workspace(root / "workspace")
    seed(ws, E2E_PATIENTS, E2E_SEED)   # first: the peers serve the records' receiving providers
    started = peers.start_all_for_demo(ws.root / "peers", records_db=ws.records_db)
    try:
        extra: dict[str, str] = {}
        for p in started:
            extra.update(p.airflow_env())
        env = prepare(ws, root / "airflow", patients=E2E_PATIENTS, seed_value=E2E_SEED, api_port=free_port(),
                      extra=extra)
        # prepare() ran the state database's migration, the deployment step (tasks only verify): say so here, so a
        # bootstrap that stopped migrating fails this fixture by name rather than every DAG run by timeout
        verify(make_engine(sqlite_url(ws.state_db)))
        # this Airflow only: the test-side fault switch (tests/faults.py), inert until a test arms it
        env = faults.e2e_airflow_env(env, root / "faults.json")
        with AirflowStack(env) as stack:
            yield DemoContext(stack=stack, workspace=ws, peers={p.name: p for p in started})
    finally:
        for p in started:
            p.stop()

"""The distributed deployment's shape without Docker: Airflow's metadata database on PostgreSQL, the
CeleryExecutor with Redis as broker and PostgreSQL as result backend, a real scheduler, dag-processor
and api-server (127.0.0.1, random port) and TWO Celery workers, all started here. A real project DAG
(records_quality, over seeded synthetic records) is triggered over the REST API and must succeed on one
of the Celery workers.

Skips with a reason when PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) is not reachable; CI has
both. Isolation: a throwaway PostgreSQL database (dropped afterwards), Redis database 13, and a queue
name and broker key prefix of this run's own (its keys, and only its keys, are deleted afterwards).
Everything started is stopped, also on failure. Nothing listens beyond loopback: the workers run with
--skip-serve-logs (the api-server reads their log files from the shared Airflow home), the scheduler
too, and Celery workers open no port.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.state.migrate import migrate
from caldicott.state.quarantine import counts_by_reason
from sqlalchemy import create_engine, text

from devtools.airflow_env import airflow_env, free_port
from devtools.bootstrap import Workspace, seed
from devtools.paths import venv_bin
from devtools.stack import AirflowStack, migrate_metadata, stop_process_groups

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 13
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"
WORKERS = ("w1", "w2")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_queue():
    if not _reachable(REDIS_HOST, REDIS_PORT):
        pytest.skip(f"Redis not reachable on {REDIS_HOST}:{REDIS_PORT} (CI runs this)")
    queue = f"caldicott_test_{uuid.uuid4().hex[:8]}"
    yield queue
    try:
        import redis

        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
        # every broker key of this run carries the run's own prefix (global_keyprefix below), so a
        # concurrent run on the same Redis (another CI job, a second checkout) keeps its bindings
        keys = list(client.scan_iter(match=f"{queue}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    except Exception as exc:  # cleanup is best effort; the db number is ours alone
        print(f"redis cleanup: {type(exc).__name__}")


class _Alerts(BaseHTTPRequestHandler):
    def do_POST(self):
        self.server.alerts.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def oncall_webhook():
    """A webhook receiver on loopback standing in for the on-call paging integration."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Alerts)
    server.alerts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/oncall", server.alerts
    finally:
        server.shutdown()
        server.server_close()


class Workers:
    """``airflow celery worker`` processes with distinct hostnames, stopped as a group."""

    def __init__(self, env: dict[str, str], queue: str, logs: Path) -> None:
        self.env, self.queue, self.logs = env, queue, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for name in WORKERS:
            env = {**self.env, "CALDICOTT_WORKER_NAME": name,
                   "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devtools.worker_identity.hostname"}
            out = open(self.logs / f"worker-{name}.log", "ab")  # noqa: SIM115 - closed with the process
            self.procs[name] = subprocess.Popen(
                [venv_bin("airflow"), "celery", "worker", "--celery-hostname", f"{name}@caldicott-test",
                 "--queues", self.queue, "--concurrency", "1", "--skip-serve-logs", "--without-gossip",
                 "--without-mingle"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def ping(self, timeout: float = 120) -> str:
        """Wait until both workers answer a Celery ping; returns the answer."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"worker {name} exited with {p.returncode}; see {self.logs}")
            res = subprocess.run([venv_bin("celery"), "--app", CELERY_APP, "inspect", "ping", "--timeout", "5",
                                  "-d", ",".join(f"{n}@caldicott-test" for n in WORKERS)],
                                 env=self.env, capture_output=True, text=True, timeout=120, check=False)
            out = res.stdout
            if all(f"{n}@caldicott-test: OK" in out for n in WORKERS):
                return out
            time.sleep(3)
        raise TimeoutError(f"workers did not answer a ping in {timeout}s: {out[-500:]}")

    def stop(self) -> None:
        stop_process_groups(self.procs.values(), grace=60)


def test_celery_executor_imports():
    """celery 5.7 dropped ``celery.backends.database.retry``, which apache-airflow-providers-celery 3.26.0
    imports: with it the CeleryExecutor cannot even load. constraints.txt must pin celery==5.6.3."""
    import celery

    try:
        from airflow.providers.celery.executors import celery_executor_utils  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"CeleryExecutor cannot load with celery {celery.__version__}: {exc}; pin celery==5.6.3")


def test_records_quality_runs_on_celery_workers(tmp_path, pg_url, redis_queue, oncall_webhook):
    webhook_url, alerts = oncall_webhook
    ws = Workspace(tmp_path / "workspace")
    seed(ws, patients=200, seed_value=3)
    migrate(make_engine(sqlite_url(ws.state_db)))
    port = free_port()
    env = airflow_env(
        tmp_path / "airflow", records_db=ws.records_db, state_db=ws.state_db, output_dir=ws.outputs,
        api_port=port, metadata_url=pg_url,
        extra={
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
            "AIRFLOW__CELERY__RESULT_BACKEND": pg_url.replace("postgresql+psycopg2://", "db+postgresql://"),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": redis_queue,
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{redis_queue}:",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "CALDICOTT_ONCALL_WEBHOOK": webhook_url,
        })
    migrate_metadata(env)

    workers = Workers(env, redis_queue, tmp_path / "airflow" / "stack-logs")
    stack = AirflowStack(env, components=("api-server", "scheduler", "dag-processor", "triggerer"))
    try:
        workers.start()
        stack.start(timeout=300)
        pong = workers.ping()
        print(pong)
        run_id = stack.trigger("records_quality", dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
        state = stack.wait_run("records_quality", run_id, timeout=600)
        status, ti = stack.api("GET", f"/dags/records_quality/dagRuns/{run_id}/taskInstances/scan_records")
        assert status == 200, ti
        print({k: ti.get(k) for k in ("state", "hostname", "queue", "executor", "try_number", "pid")})
        assert state == "success", ti
        assert ti["state"] == "success"
        assert ti["queue"] == redis_queue
        assert ti["hostname"] in WORKERS, "the task must have run on one of the Celery workers"
        worker_log = (tmp_path / "airflow" / "stack-logs" / f"worker-{ti['hostname']}.log").read_text(errors="replace")
        assert "execute_workload" in worker_log and "succeeded" in worker_log
        # the Celery result backend (PostgreSQL) holds the task's result
        eng = create_engine(pg_url)
        with eng.connect() as conn:
            done = conn.execute(text("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")).scalar()
        eng.dispose()
        assert done >= 1
        # and the DAG did its work: findings in the state database, counts only in XCom
        counts = stack.xcom("records_quality", run_id, "scan_records")
        assert counts and counts["quarantined"] == sum(counts_by_reason(
            make_engine(sqlite_url(ws.state_db)), "records_quality", "2026-11-01").values())
        # records_quality carries a 06:00 deadline; this run's logical date is long past, so the scheduler
        # marks it missed and the triggerer runs the callback from plugins/: an alert reaches the webhook.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(a.get("run_id") == run_id for a in alerts):
            time.sleep(2)
        missed = [a for a in alerts if a.get("run_id") == run_id]
        assert missed, "no deadline alert reached the on-call webhook"
        assert missed[0]["kind"] == "deadline_missed" and missed[0]["dag_id"] == "records_quality"
        assert missed[0]["alert"] == "records_quality not finished by 06:00"
    finally:
        try:
            stack.stop()
        finally:
            workers.stop()

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

A failure explains itself: the report gets a section "deployment diagnostics" with the step that failed,
each process's state, the DAG runs, task instances (and earlier tries), scheduler/triggerer jobs,
deadlines, Celery results and broker keys as they were at that moment, the alerts the webhook received,
and the last 40 lines of every component's log and of the task's own log. Patient values of the seeded
records and the deployment's secrets are replaced before anything is shown (synthetic data, but the
habit is the point).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.state.migrate import migrate
from caldicott.state.quarantine import counts_by_reason
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from devtools.airflow_env import airflow_env, free_port
from devtools.bootstrap import Workspace, seed
from devtools.leakscan import patient_values
from devtools.paths import venv_bin
from devtools.stack import AirflowStack, migrate_metadata, stop_process_groups

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 13
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"
WORKERS = ("w1", "w2")
DAG_ID, TASK_ID = "records_quality", "scan_records"
TAIL_LINES, LINE_WIDTH = 40, 600
#: How long the worker may still be finishing after the run is already "success" (see _wait_for).
WORKER_SETTLE_SECONDS = 60


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


def _brief(value: object) -> str:
    """A metadata value as a reader wants it: timestamps to the second, long text on one line."""
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    return " ".join(str(value).split())


class Stack(AirflowStack):
    """:class:`AirflowStack` that remembers how its processes stood before it stopped them.

    ``AirflowStack.start`` stops everything when a component dies while starting; the failure report
    still has to say which one died, and with what.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.before_stop: dict[str, int | None] = {}

    def stop(self) -> None:
        if self.procs:
            self.before_stop = {name: p.poll() for name, p in self.procs.items()}
        super().stop()


class Diagnostics:
    """What a reader of a failed run needs, gathered at the moment of failure and before anything is stopped.

    Reads the metadata database directly (the api-server may be the component that died), the broker's
    keys of this run, and the tails of the log files every component writes under the Airflow home.
    Everything passes through :meth:`redact` before it reaches the report.
    """

    def __init__(self, *, home: Path, pg_url: str, queue: str, records_db: Path, alerts: list[dict]) -> None:
        self.home, self.pg_url, self.queue, self.records_db, self.alerts = home, pg_url, queue, records_db, alerts
        self.step = "setting up"
        self.stack: Stack | None = None
        self.workers: Workers | None = None
        self.started = time.monotonic()
        self.timeline: list[str] = []

    def at(self, step: str) -> None:
        """Record the step the test is in, so a failure report starts with where it stopped."""
        self.step = step
        self.timeline.append(f"{time.monotonic() - self.started:6.1f}s {step}")

    # ---- sections ------------------------------------------------------------------------------------
    def _processes(self) -> list[str]:
        lines = []
        procs = {**({f"worker {n}": p for n, p in self.workers.procs.items()} if self.workers else {}),
                 **(self.stack.procs if self.stack else {})}
        for name, p in procs.items():
            rc = p.poll()
            lines.append(f"{name}: {'running' if rc is None else f'exited with {rc}'} (pid {p.pid})")
        if self.stack and not self.stack.procs and self.stack.before_stop:
            lines += [f"{name}: {'was running' if rc is None else f'had exited with {rc}'} when the stack "
                      f"stopped itself" for name, rc in self.stack.before_stop.items()]
        return lines or ["(none started)"]

    def _metadata(self) -> list[str]:
        queries = {
            "dag": "SELECT dag_id, is_paused, is_stale, has_import_errors FROM dag ORDER BY dag_id",
            "import_error": "SELECT filename, right(stacktrace, 800) AS stacktrace_tail FROM import_error",
            "dag_run": "SELECT dag_id, run_id, state, run_type, logical_date, queued_at, start_date, end_date "
                       "FROM dag_run ORDER BY id",
            "task_instance": "SELECT dag_id, task_id, run_id, state, try_number, hostname, queue, executor, pid, "
                             "queued_dttm, start_date, end_date, external_executor_id FROM task_instance "
                             "ORDER BY dag_id, task_id",
            "task_instance_history (earlier tries)":
                "SELECT dag_id, task_id, try_number, state, hostname, start_date, end_date "
                "FROM task_instance_history ORDER BY dag_id, task_id, try_number",
            "job (scheduler, triggerer, dag-processor)":
                "SELECT job_type, state, hostname, start_date, latest_heartbeat, end_date FROM job ORDER BY id",
            "deadline": "SELECT d.deadline_time, d.missed, c.state AS callback_state, c.type AS callback_type "
                        "FROM deadline d LEFT JOIN callback c ON c.id = d.callback_id",
            "celery_taskmeta (Celery result backend)":
                "SELECT status, count(*) AS n, max(date_done) AS last_done FROM celery_taskmeta GROUP BY status",
        }
        lines = []
        engine = create_engine(self.pg_url, poolclass=NullPool,
                               connect_args={"connect_timeout": 5, "options": "-c statement_timeout=10000"})
        try:
            try:
                engine.connect().close()
            except Exception as exc:
                return [f"(metadata database not reachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})"]
            for title, sql in queries.items():
                try:
                    with engine.connect() as conn:
                        rows = conn.execute(text(sql)).mappings().all()
                except Exception as exc:  # a table that does not exist yet says something too
                    lines.append(f"{title}: not readable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
                    continue
                lines.append(f"{title}: {len(rows)} row(s)")
                lines += ["  " + ", ".join(f"{k}={_brief(v)}" for k, v in row.items()) for row in rows[:20]]
        finally:
            engine.dispose()
        return lines

    def _broker(self) -> list[str]:
        try:
            import redis

            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=5)
            try:
                lines = []
                for key in sorted(client.scan_iter(match=f"{self.queue}:*"))[:30]:
                    kind = client.type(key).decode()
                    size = {"list": client.llen, "hash": client.hlen, "set": client.scard,
                            "zset": client.zcard}.get(kind, lambda _k: "-")(key)
                    lines.append(f"{key.decode(errors='replace')}: {kind}, {size} entr(y/ies)")
                return lines or ["(no keys under this run's prefix: nothing queued, nothing unacknowledged)"]
            finally:
                client.close()
        except Exception as exc:
            return [f"(Redis not readable: {type(exc).__name__})"]

    def _logs(self) -> list[str]:
        files = sorted((self.home / "stack-logs").glob("*.log"))
        files += sorted((self.home / "logs").glob(f"dag_id={DAG_ID}/**/*.log"))
        out = []
        for path in files:
            lines = path.read_text(errors="replace").splitlines()
            out.append(f"---- {path.relative_to(self.home)}: last {min(TAIL_LINES, len(lines))} "
                       f"of {len(lines)} lines ----")
            out += [line if len(line) <= LINE_WIDTH else line[:LINE_WIDTH] + " [...]" for line in lines[-TAIL_LINES:]]
        return out or ["(no log files)"]

    # ---- the report ----------------------------------------------------------------------------------
    def redact(self, report: str) -> str:
        """Replace the deployment's secrets and every patient value of the seeded records."""
        for name in ("secrets.json", "passwords.json"):  # written by devtools.airflow_env, mode 0600
            path = self.home / name
            if path.exists():
                for key, value in json.loads(path.read_text()).items():
                    report = report.replace(value, f"<{path.stem}:{key}>")
        report = re.sub(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", "<jwt>", report)
        try:
            vals = patient_values(self.records_db) if self.records_db.exists() else {}
        except Exception as exc:  # without the values nobody can vouch for the text: show none of it
            return f"(diagnostics withheld: the patient values to redact are not readable: {type(exc).__name__})"
        if "postcode" in vals:
            vals["postcode"] |= {p.replace(" ", "") for p in vals["postcode"]}
        kinds = {v: kind for kind, vs in vals.items() for v in vs if v}
        if not kinds:
            return report
        found = 0

        def swap(m: re.Match) -> str:
            nonlocal found
            found += 1
            return f"<patient {kinds[m.group(0)]}>"

        alternatives = "|".join(re.escape(v) for v in sorted(kinds, key=len, reverse=True))
        report = re.sub(rf"(?<!\w)(?:{alternatives})(?!\w)", swap, report)
        if found:
            report += (f"\n!! {found} patient value(s) replaced above: patient data reached Airflow's logs or "
                       "metadata, which invariant 2 forbids (python -m devtools.leakscan says where)\n")
        return report

    def report(self) -> str:
        sections = {
            f"failed while: {self.step}": self.timeline,
            "processes": self._processes(),
            "metadata database (PostgreSQL)": self._metadata(),
            f"broker (Redis db {REDIS_DB}, keys of prefix {self.queue}:)": self._broker(),
            "on-call webhook": [f"{len(self.alerts)} alert(s)"] + [
                f"  {a.get('kind')} {a.get('dag_id')} {a.get('run_id')}: {a.get('alert')}" for a in self.alerts],
            f"logs (whole files under {self.home})": self._logs(),
        }
        return self.redact("\n".join(f"== {title} ==\n" + "\n".join(lines) + "\n" for title, lines in sections.items()))

    def summary(self) -> str:
        """One short paragraph for the exception itself: where it stopped and the states."""
        try:
            engine = create_engine(self.pg_url, poolclass=NullPool, connect_args={"connect_timeout": 5})
            try:
                with engine.connect() as conn:
                    runs = conn.execute(text("SELECT run_id, state FROM dag_run WHERE dag_id = :d"),
                                        {"d": DAG_ID}).all()
                    tis = conn.execute(text("SELECT task_id, state, try_number, hostname FROM task_instance "
                                            "WHERE dag_id = :d"), {"d": DAG_ID}).all()
            finally:
                engine.dispose()
            states = f"dag runs {[tuple(r) for r in runs]}; task instances {[tuple(t) for t in tis]}"
        except Exception as exc:
            states = f"states not readable ({type(exc).__name__})"
        return self.redact(f"failed while {self.step}; {states}; "
                           "full report: section 'Captured deployment diagnostics call'")

    def attach(self, request: pytest.FixtureRequest, exc: BaseException) -> None:
        """Put the report into pytest's report of this test, and a summary onto the exception."""
        try:
            request.node.add_report_section("call", "deployment diagnostics", self.report())
            exc.add_note(self.summary())
        except Exception as diag_exc:  # never let the diagnosis hide the failure it diagnoses
            exc.add_note(f"(collecting deployment diagnostics failed: {type(diag_exc).__name__}: {diag_exc})")


def _wait_for(what: str, check: Callable[[], bool], timeout: float = WORKER_SETTLE_SECONDS) -> None:
    """Poll ``check`` until it holds. The run is "success" as soon as the task reported its state to the
    api-server, but the worker writes the Celery result and logs "succeeded" only once its supervisor
    has finished: on a loaded machine a second or more later."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout}s")
        time.sleep(1)


def _wait_run(stack: AirflowStack, run_id: str, timeout: float) -> str:
    """Wait for the run to finish; give up at once if the task failed a try.

    Tasks retry with backoff (1, 2, 4 minutes): waiting those out would only hide the first failure behind
    a timeout. A fresh deployment whose one task needs a retry is broken, and the report shows why.
    """
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        state = stack.run_state(DAG_ID, run_id)
        if state in ("success", "failed"):
            return state
        ti_state = stack.task_states(DAG_ID, run_id).get(TASK_ID)
        if ti_state in ("up_for_retry", "failed"):
            return f"{state} ({TASK_ID} {ti_state})"
        time.sleep(2)
    raise TimeoutError(f"{DAG_ID} {run_id} still {state} after {timeout}s")


def _succeeded_in(log: Path) -> bool:
    """Celery's own line for a finished task: ``Task execute_workload[<id>] succeeded in 5.2s: None``."""
    return log.exists() and bool(re.search(r"execute_workload\[[\w-]+\] succeeded", log.read_text(errors="replace")))


def test_celery_executor_imports():
    """celery 5.7 dropped ``celery.backends.database.retry``, which apache-airflow-providers-celery 3.26.0
    imports: with it the CeleryExecutor cannot even load. constraints.txt must pin celery==5.6.3."""
    import celery

    try:
        from airflow.providers.celery.executors import celery_executor_utils  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"CeleryExecutor cannot load with celery {celery.__version__}: {exc}; pin celery==5.6.3")


def test_records_quality_runs_on_celery_workers(request, tmp_path, pg_url, redis_queue, oncall_webhook):
    webhook_url, alerts = oncall_webhook
    ws = Workspace(tmp_path / "workspace")
    home = tmp_path / "airflow"
    diag = Diagnostics(home=home.resolve(), pg_url=pg_url, queue=redis_queue, records_db=ws.records_db,
                       alerts=alerts)

    def deployment_env(port: int) -> dict[str, str]:
        return airflow_env(
            home, records_db=ws.records_db, state_db=ws.state_db, output_dir=ws.outputs,
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

    workers: Workers | None = None
    stack: Stack | None = None
    try:
        diag.at("seeding records and migrating the databases")
        seed(ws, patients=200, seed_value=3)
        migrate(make_engine(sqlite_url(ws.state_db)))
        migrate_metadata(deployment_env(free_port()))  # a migration does not use the port
        # the api-server's port is chosen only now: free_port() releases it, so every second between
        # choosing and binding (a migration's seconds, before) is a second in which another process may bind it
        env = deployment_env(free_port())
        diag.workers = workers = Workers(env, redis_queue, home / "stack-logs")
        diag.stack = stack = Stack(env, components=("api-server", "scheduler", "dag-processor", "triggerer"))
        diag.at("starting the workers and the stack (until the api-server reports a healthy scheduler)")
        workers.start()
        stack.start(timeout=300)
        diag.at("waiting for both Celery workers to answer a ping")
        print(workers.ping())
        diag.at(f"triggering {DAG_ID} (the dag-processor must have parsed it)")
        run_id = stack.trigger(DAG_ID, dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
        diag.at(f"waiting for the run {run_id}")
        state = _wait_run(stack, run_id, timeout=600)
        diag.at(f"checking the finished run (state {state})")
        status, ti = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK_ID}")
        assert status == 200, ti
        print({k: ti.get(k) for k in ("state", "hostname", "queue", "executor", "try_number", "pid")})
        assert state == "success", f"run {state}; {TASK_ID} {ti.get('state')} on {ti.get('hostname')}"
        assert ti["state"] == "success"
        assert ti["queue"] == redis_queue
        assert ti["hostname"] in WORKERS, "the task must have run on one of the Celery workers"
        worker_log = home / "stack-logs" / f"worker-{ti['hostname']}.log"
        _wait_for(f"'execute_workload[...] succeeded' in {worker_log.name}", lambda: _succeeded_in(worker_log))
        # the Celery result backend (PostgreSQL) holds the task's result
        eng = create_engine(pg_url, poolclass=NullPool)

        def stored() -> bool:
            with eng.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")).scalar() > 0

        try:
            _wait_for("a SUCCESS row in celery_taskmeta", stored)
        finally:
            eng.dispose()
        # and the DAG did its work: findings in the state database, counts only in XCom
        counts = stack.xcom(DAG_ID, run_id, TASK_ID)
        assert counts and counts["quarantined"] == sum(counts_by_reason(
            make_engine(sqlite_url(ws.state_db)), DAG_ID, "2026-11-01").values())
        # records_quality carries a 06:00 deadline; this run's logical date is long past, so the scheduler
        # marks it missed and the triggerer runs the callback from plugins/: an alert reaches the webhook.
        diag.at("waiting for the deadline alert at the on-call webhook")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(a.get("run_id") == run_id for a in alerts):
            time.sleep(2)
        missed = [a for a in alerts if a.get("run_id") == run_id]
        assert missed, "no deadline alert reached the on-call webhook"
        assert missed[0]["kind"] == "deadline_missed" and missed[0]["dag_id"] == DAG_ID
        assert missed[0]["alert"] == f"{DAG_ID} not finished by 06:00"
    except (Exception, pytest.fail.Exception) as exc:  # pytest-timeout's signal method raises the latter
        diag.attach(request, exc)  # before stopping anything: the processes' state is part of the story
        raise
    finally:
        try:
            if stack is not None:
                stack.stop()
        finally:
            if workers is not None:
                workers.stop()

"""Start a real local Airflow (api-server, scheduler, dag-processor, triggerer) on loopback, and drive it.

``airflow standalone`` would start log servers on every interface; a health-data service must not, so
each component is started here with ``--skip-serve-logs`` and the API on 127.0.0.1. With
LocalExecutor the task logs are files under the Airflow home, read by the api-server directly.
The stack is a context manager: leaving it stops every process it started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.airflow_env import passwords
from devtools.paths import venv_bin

log = logging.getLogger(__name__)

COMPONENTS = {
    "api-server": ["api-server", "-H", "127.0.0.1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def airflow(env: dict[str, str], *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one ``airflow`` CLI command in ``env``."""
    return subprocess.run([venv_bin("airflow"), *args], env=env, check=check, timeout=timeout,
                          capture_output=True, text=True)


def migrate_metadata(env: dict[str, str]) -> None:
    """``airflow db migrate`` (idempotent)."""
    res = airflow(env, "db", "migrate", check=False)
    if res.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")


def stop_process_groups(procs, grace: float = 30) -> None:
    """SIGTERM each process's group (started with ``start_new_session``), then SIGKILL what outlives ``grace``."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


#: Airflow 3.3 race: an answer that resumes a HITL task before the scheduler has processed the executor's
#: event for the attempt that parked makes the scheduler think the state "changed externally" and retry the
#: task (which asks again: nothing is lost or released, but the answer is). A person never answers that fast;
#: automation waits for the scheduler's "TaskInstance Finished" line for the parked attempt, at most this long.
HITL_SETTLE_SECONDS = 60


class AirflowStack:
    """A running local Airflow. ``with AirflowStack(env) as af: af.trigger(...)``."""

    def __init__(self, env: dict[str, str], components: tuple[str, ...] = tuple(COMPONENTS)) -> None:
        self.env = env
        self.home = Path(env["AIRFLOW_HOME"])
        self.port = int(env["AIRFLOW__API__PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.components = components
        self.procs: dict[str, subprocess.Popen] = {}
        self._tokens: dict[str, str] = {}

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> AirflowStack:
        logs = self.home / "stack-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in self.components:
            out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
            cmd = [venv_bin("airflow"), *COMPONENTS[name]]
            if name == "api-server":
                cmd += ["-p", str(self.port)]
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:  # a component died or never became healthy: stop the others, leave nothing behind
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited with {p.returncode}; see {self.home}/stack-logs")
            try:
                with urllib.request.urlopen(f"{self.base}/api/v2/monitor/health", timeout=5) as r:
                    health = json.loads(r.read())
                if health.get("scheduler", {}).get("status") == "healthy" or "scheduler" not in self.components:
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"airflow did not become healthy in {timeout}s; see {self.home}/stack-logs")

    def stop(self) -> None:
        stop_process_groups(self.procs.values(), grace=30)
        self.procs.clear()

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- REST API ----------------------------------------------------------------------------------
    def token(self, user: str = "admin") -> str:
        if user not in self._tokens:
            body = json.dumps({"username": user, "password": passwords(self.home)[user]}).encode()
            req = urllib.request.Request(f"{self.base}/auth/token", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                self._tokens[user] = json.loads(r.read())["access_token"]
        return self._tokens[user]

    def request(self, method: str, path: str, body: dict | None = None, *, token: str | None = None
                ) -> tuple[int, dict]:
        """One JSON request to ``path`` (from the server root); returns (status, JSON body), never raises on 4xx."""
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        req = urllib.request.Request(f"{self.base}{path}", method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"detail": raw.decode(errors="replace")}

    def api(self, method: str, path: str, body: dict | None = None, *, user: str = "admin") -> tuple[int, dict]:
        """Call the REST API as ``user``; returns (status, JSON body). Does not raise on 4xx."""
        return self.request(method, f"/api/v2{path}", body, token=self.token(user))

    def wait_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed ``dag_id`` into the metadata database."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = self.api("GET", f"/dags/{dag_id}")
            if status == 200:
                return
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} was not parsed within {timeout}s")

    def trigger(self, dag_id: str, logical_date: dt.datetime, conf: dict | None = None,
                run_id: str | None = None, *, user: str = "admin") -> str:
        """Trigger a run for ``logical_date`` (its data interval is the period before it), as ``user``."""
        self.wait_dag(dag_id)
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        body = {"logical_date": logical_date.isoformat(), "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        status, data = self.api("POST", f"/dags/{dag_id}/dagRuns", body, user=user)
        if status == 409 and not run_id:
            return self.rerun(dag_id, logical_date)
        if status not in (200, 201):
            raise RuntimeError(f"trigger {dag_id} failed: {status} {data}")
        return data["dag_run_id"]

    def rerun(self, dag_id: str, logical_date: dt.datetime) -> str:
        """Clear the existing run for ``logical_date`` so every task runs again (how on-call redoes a day).

        Airflow allows one run per logical date; re-running the demo clears that run instead, which is
        also the proof that every task is idempotent: the second pass finds the work done.
        """
        stamp = logical_date.isoformat().replace("+00:00", "Z")
        status, data = self.api("GET", f"/dags/{dag_id}/dagRuns?logical_date_gte={stamp}&logical_date_lte={stamp}")
        runs = data.get("dag_runs", []) if status == 200 else []
        if not runs:
            raise RuntimeError(f"{dag_id}: a run for {stamp} exists but could not be found ({status})")
        run_id = runs[0]["dag_run_id"]
        status, data = self.api("POST", f"/dags/{dag_id}/clearTaskInstances",
                                {"dry_run": False, "dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True})
        if status != 200:
            raise RuntimeError(f"clearing {dag_id} {run_id} failed: {status} {data}")
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str:
        status, data = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return data.get("state", "unknown") if status == 200 else "unknown"

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600,
                 until: tuple[str, ...] = ("success", "failed")) -> str:
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in until:
                return state
            time.sleep(2)
        raise TimeoutError(f"{dag_id} {run_id} still {state} after {timeout}s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        status, data = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {t["task_id"]: t["state"] for t in data.get("task_instances", [])} if status == 200 else {}

    def wait_task_state(self, dag_id: str, run_id: str, task_id: str, want: str, timeout: float = 300) -> None:
        """Wait until ``task_id`` is in state ``want``; for ``awaiting_input`` also until it is safe to answer."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.task_states(dag_id, run_id)
            if states.get(task_id) == want:
                if want == "awaiting_input":
                    self.settle_parked(dag_id, run_id, task_id)
                return
            if self.run_state(dag_id, run_id) in ("failed", "success"):
                break
            time.sleep(2)
        raise TimeoutError(f"{dag_id} {run_id}: {task_id} never reached {want}: {states}")

    def settle_parked(self, dag_id: str, run_id: str, task_id: str) -> None:
        """Wait until the scheduler has handled the executor's event for the attempt that is awaiting input.

        See :data:`HITL_SETTLE_SECONDS`. The scheduler logs one ``TaskInstance Finished`` line per executor
        event it processes; once the parked attempt's line is there, an answer resumes the task cleanly.
        """
        status, ti = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        tries = ti.get("try_number") if status == 200 else None
        line = re.compile(re.escape(f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id},")
                          + r".*?" + (rf"try_number={tries}," if tries is not None else ""))
        log_file = self.home / "stack-logs" / "scheduler.log"
        deadline = time.monotonic() + HITL_SETTLE_SECONDS
        while time.monotonic() < deadline:
            if log_file.exists() and line.search(log_file.read_text(errors="replace")):
                time.sleep(2)   # the scheduler commits what it logged at the end of its loop
                return
            time.sleep(1)
        log.warning("%s %s: no scheduler event seen for %s after %ss; answering anyway", dag_id, run_id, task_id,
                    HITL_SETTLE_SECONDS)

    def answer(self, dag_id: str, run_id: str, task_id: str, option: str, params: dict | None = None, *,
               user: str = "admin") -> tuple[int, dict]:
        """Answer a HITL task (``chosen_options=[option]``) as ``user``, over the REST API."""
        return self.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                        {"chosen_options": [option], "params_input": params or {}}, user=user)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        status, data = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        return data.get("value") if status == 200 else None

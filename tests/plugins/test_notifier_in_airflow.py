"""The on-call notifier inside a real Airflow task failure (``airflow dags test``, real task runner and
callback context), posting to a real webhook receiver on loopback: the alert has the run's facts — DAG,
task, run, try number, log link, error class — and none of the patient identifiers the exception held."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from devtools.airflow_env import airflow_env
from devtools.paths import venv_bin

pytestmark = pytest.mark.slow

DAG_FILE = '''
"""Probe: a task that fails with patient data in its exception text."""
import json, os
import pendulum
from airflow.sdk import dag, task
from caldicott_airflow.dag_defaults import COMMON_TAGS, default_args

@dag(dag_id="oncall_probe", schedule=None, start_date=pendulum.datetime(2026, 10, 1, tz="Europe/London"),
     catchup=False, doc_md=__doc__, tags=COMMON_TAGS, default_args=default_args(retries=0))
def oncall_probe():
    @task
    def explode():
        raise ValueError(json.load(open(os.environ["PROBE_MESSAGE_FILE"]))["message"])
    explode()

oncall_probe()
'''


def test_notifier_alerts_from_a_real_failed_task(tmp_path, synth_source, webhook):
    p = synth_source.result.frames["patient"]
    row = p[p["email"].notna() & p["birth_date"].notna()].iloc[3]
    nhs, bd = str(row["nhs_number"]), row["birth_date"]
    message = (f"row for {row['given_name']} {row['family_name']} born {bd:%Y-%m-%d} at {row['postcode']} "
               f"<{row['email']}> NHS {nhs} rejected")
    (tmp_path / "message.json").write_text(json.dumps({"message": message}))
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "oncall_probe.py").write_text(textwrap.dedent(DAG_FILE))

    env = airflow_env(tmp_path / "airflow", api_port=8080, extra={
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "CALDICOTT_ONCALL_WEBHOOK": webhook.url,
        "PROBE_MESSAGE_FILE": str(tmp_path / "message.json")})
    env.pop("CALDICOTT_ONCALL_EMAIL", None)
    res = subprocess.run([venv_bin("airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    subprocess.run(["timeout", "-s", "INT", "400", venv_bin("airflow"), "dags", "test", "oncall_probe",
                    "2026-11-02T00:00:00+00:00"], env=env, capture_output=True, text=True, timeout=450, check=False)

    assert len(webhook.received) == 1, "the failed task did not alert"
    raw = webhook.received[0]["body"].decode()
    msg = json.loads(raw)
    assert msg["kind"] == "task_failed"
    assert (msg["dag_id"], msg["task_id"]) == ("oncall_probe", "explode")
    assert msg["run_id"] and msg["try_number"] == 1
    assert "/dags/oncall_probe/runs/" in msg["log_url"] and "/tasks/explode" in msg["log_url"]
    assert msg["error_class"] == "ValueError"
    assert msg["error"].startswith("row for <name> <name> born <date>")
    for value in (nhs, row["given_name"], row["family_name"], row["postcode"], row["email"], f"{bd:%Y-%m-%d}"):
        assert value.lower() not in raw.lower()

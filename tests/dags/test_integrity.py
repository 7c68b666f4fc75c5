"""DAG integrity over the DagBag: every DAG file in dags/ imports, and every DAG has what on-call staff
and the Caldicott principles need — an owner, the ``caldicott`` tag, retries with exponential backoff,
docs, the on-call notifier on every task, the deadline alerts where lateness matters, and no Param
default that looks like patient data.

Files are discovered at collection time (``dags/*.py``), so a new DAG file is covered without editing
this test. Nothing here needs a secret, a connection or a running Airflow.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import re
from pathlib import Path

import pytest

os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))

NHS_NUMBER = re.compile(r"(?<!\d)\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
POSTCODE = re.compile(r"\b[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}\b", re.I)
PATIENTISH_KEY = re.compile(r"(?i)nhs|given|family|surname|first_?name|last_?name|patient_name|birth|dob|"
                            r"postcode|address|email|phone")

# Tasks allowed fewer than one retry, each with its reason. Keep this short: a retry is what saves
# on-call staff from being paged for a transient fault.
# A task that fails on purpose to alert should raise AirflowFailException (never retried) rather than
# set retries=0, so that its transient faults still retry. Format: {(dag_id, task_id): "reason"}.
RETRIES_EXEMPT: dict[tuple[str, str], str] = {}

# Where lateness matters: the DAG, the alert's name, what its deadline is measured from and the interval. The
# daily flows: after the run's logical date (its scheduled time, London). The monthly data set: before the close
# of the submission window that takes the run's month, from the published calendar. A DAG listed here must
# carry exactly this deadline alert, with the callback the triggerer imports from plugins/.
DEADLINES: dict[str, tuple[str, str, dt.timedelta]] = {
    "records_quality": ("records_quality not finished by 06:00", "logical_date", dt.timedelta(hours=6)),
    "gp_letters": ("gp_letters not finished by 10:00", "logical_date", dt.timedelta(hours=4)),
    "monthly_dataset": ("monthly data set not submitted 72 h before the submission window closes",
                        "window_close", -dt.timedelta(hours=72)),
}
DEADLINE_CALLBACK = "caldicott_airflow.deadlines.deadline_missed"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def _dags_of(dagbag, path: Path):
    return [d for d in dagbag.dags.values() if Path(d.fileloc).resolve() == path.resolve()]


def test_dag_files_exist():
    assert DAG_FILES, f"no DAG files under {DAGS}"


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, "\n".join(f"{k}: {v[-500:]}" for k, v in dagbag.import_errors.items())


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_each_file_defines_a_dag(dagbag, path):
    assert _dags_of(dagbag, path), f"{path.name} defines no DAG (or failed to import)"


def _is_oncall(cb) -> bool:
    return type(cb).__name__ == "OnCallNotifier" and type(cb).__module__.endswith("caldicott_airflow.notifiers")


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_policy(dagbag, path):
    for dag in _dags_of(dagbag, path):
        assert "caldicott" in dag.tags, f"{dag.dag_id}: tags must include 'caldicott'"
        assert (dag.doc_md or "").strip(), f"{dag.dag_id}: doc_md missing (use doc_md=__doc__)"
        assert dag.tasks, f"{dag.dag_id}: no tasks"
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            assert task.owner and task.owner != "airflow", f"{where}: owner must be set (not 'airflow')"
            if (dag.dag_id, task.task_id) not in RETRIES_EXEMPT:
                assert task.retries >= 1, f"{where}: retries must be >= 1"
                assert task.retry_delay and task.retry_delay > dt.timedelta(0), f"{where}: retry_delay must be set"
                backoff = task.retry_exponential_backoff
                assert backoff is True or (not isinstance(backoff, bool) and backoff > 1), \
                    f"{where}: retries must back off exponentially (retry_exponential_backoff)"
            callbacks = task.on_failure_callback or []
            if not isinstance(callbacks, list | tuple):
                callbacks = [callbacks]
            assert any(_is_oncall(cb) for cb in callbacks), f"{where}: on_failure_callback lacks OnCallNotifier"


def _deadlines(dag) -> list:
    found = dag.deadline
    return list(found) if isinstance(found, list | tuple) else [found] if found else []


@pytest.mark.parametrize("dag_id", sorted(DEADLINES))
def test_deadline_alerts_are_wired(dagbag, dag_id):
    """The monthly submission window and the daily finish-by hours really are on the DAGs."""
    from airflow.sdk import DeadlineReference

    dag = dagbag.dags.get(dag_id)
    assert dag is not None, f"{dag_id} is not in the DagBag"
    from caldicott_airflow.deadlines import SubmissionWindowClose

    name, measured_from, interval = DEADLINES[dag_id]
    alerts = _deadlines(dag)
    assert [a.name for a in alerts] == [name], f"{dag_id}: deadline alerts {[a.name for a in alerts]}"
    alert = alerts[0]
    if measured_from == "logical_date":
        assert alert.reference == DeadlineReference.DAGRUN_LOGICAL_DATE
    else:
        assert isinstance(alert.reference, SubmissionWindowClose), alert.reference
    assert alert.interval == interval, f"{dag_id}: fires {alert.interval} from its reference, not {interval}"
    assert alert.callback.path == DEADLINE_CALLBACK
    module, _, func = alert.callback.path.rpartition(".")
    assert callable(getattr(importlib.import_module(module), func)), "the triggerer must be able to import it"
    assert str(dag.timezone) == "Europe/London", f"{dag_id}: the deadline hour must be a London hour"


def _patientish(key: str, value) -> str | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    text = str(value)
    if NHS_NUMBER.search(text):
        return "an NHS-number-like number"
    if EMAIL.search(text):
        return "an e-mail address"
    if POSTCODE.search(text):
        return "a postcode"
    if PATIENTISH_KEY.search(key):
        return f"a non-empty default for a patient-data field {key!r}"
    return None


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_patient_data_in_param_defaults(dagbag, path):
    for dag in _dags_of(dagbag, path):
        params = [("dag", dag.params)] + [(t.task_id, t.params) for t in dag.tasks]
        for owner, pdict in params:
            for key, value in pdict.dump().items():
                problem = _patientish(key, value)
                assert problem is None, f"{dag.dag_id} ({owner}) Param {key!r} default is {problem}"


def test_patientish_detector():
    assert _patientish("day", "2026-10-14") is None
    assert _patientish("request_ref", "DR-2026-0001") is None
    assert _patientish("x", "999 191 4722")
    assert _patientish("x", "someone@example.org")
    assert _patientish("x", "LS6 4AB")
    assert _patientish("nhs_number", "x")
    assert _patientish("nhs_number", "") is None

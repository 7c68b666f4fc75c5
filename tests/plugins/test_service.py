"""``caldicott_airflow.service.sending_service``: the sending service from the Airflow Variable ``caldicott_service``,
failing the task (no retry) with a message naming the Variable and the field when it is unset or wrong. Read through
Airflow's own secrets backends (the ``AIRFLOW_VAR_*`` environment backend here), as a worker reads it."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowFailException
from caldicott_airflow.service import VARIABLE, sending_service

from devtools.demo_service import DEMO_SERVICE, airflow_env

ENV = f"AIRFLOW_VAR_{VARIABLE.upper()}"


@pytest.fixture(autouse=True)
def _no_cached_variable():
    from airflow.sdk.execution_time.cache import SecretCache

    SecretCache.reset()   # a value cached by an earlier test must not answer for this one
    yield
    SecretCache.reset()


def test_the_variable_builds_the_service(monkeypatch):
    monkeypatch.setenv(*next(iter(airflow_env().items())))
    service = sending_service()
    assert service.name == DEMO_SERVICE["name"] and service.ods_code == DEMO_SERVICE["ods_code"]
    assert service.clinician.sds_user_id == DEMO_SERVICE["clinician"]["sds_user_id"]


def test_unset_fails_the_task_naming_the_variable(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(AirflowFailException, match="Airflow Variable 'caldicott_service' is not set"):
        sending_service()


@pytest.mark.parametrize(("value", "says"), [
    ("", "is not set"),
    ("{not json", "is not valid JSON"),
    (json.dumps({**DEMO_SERVICE, "ods_code": ""}), "ods_code is missing"),
    (json.dumps({k: v for k, v in DEMO_SERVICE.items() if k != "clinician"}), "clinician is missing"),
])
def test_a_wrong_value_fails_the_task_naming_the_field(monkeypatch, value, says):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(AirflowFailException) as failed:
        sending_service()
    assert "caldicott_service" in str(failed.value) and says in str(failed.value)

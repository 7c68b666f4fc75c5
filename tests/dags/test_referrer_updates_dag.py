"""The referrer_updates DAG's shape: one mapped delivery task per contract with retries and backoff, and a
report that runs whatever happened and so can fail the run (it is the only leaf)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "referrer_updates.py"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.dags["referrer_updates"]


def test_one_mapped_delivery_per_contract(dag):
    deliver = dag.get_task("deliver")
    assert type(deliver).__name__.endswith("MappedOperator")
    assert deliver.upstream_task_ids == {"plan"}
    assert deliver.map_index_template == "{{ contract_id }}"


def test_delivery_retries_with_backoff(dag):
    deliver = dag.get_task("deliver")
    assert deliver.retries >= 2
    assert deliver.retry_exponential_backoff


def test_report_is_the_only_leaf_and_runs_after_failures(dag):
    assert [t.task_id for t in dag.leaves] == ["report"]
    assert dag.get_task("report").trigger_rule == "all_done"


def test_params_carry_no_patient_data(dag):
    assert set(dag.params) == {"day", "activity_month"}
    assert all(dag.params[k] is None for k in dag.params)

"""``airflow dags test`` in the tests: the DAGs without their deadline alerts (test-only; never deployed).

Airflow 3.3.2's ``dag.test()`` / ``airflow dags test`` do not evaluate deadlines and crash when a run of a DAG
with a DAG-level deadline *succeeds* (``DagRun.update_state`` → ``DeadlineAlertModel.get_by_id`` receives the
SDK object: ``'dict' object has no attribute 'hex'``; the tasks did run). A test that runs a DAG that way puts
this folder first on the subprocess's ``PYTHONPATH`` (:data:`tests.dagtest.PYTHONPATH`); Python imports
``sitecustomize`` as the process starts, and this one makes the deadline helpers of
``caldicott_airflow.deadlines`` return no alert before any DAG file is parsed. The production code has no
switch for it: the dag-processor and scheduler of a deployment always see the deadlines.
"""

from __future__ import annotations

try:
    import caldicott_airflow.deadlines as _deadlines
except ImportError:   # not an Airflow process of this project
    _deadlines = None

if _deadlines is not None:
    for _name in ("daily_finish_by", "submission_window", "submission_window_close"):
        if hasattr(_deadlines, _name):
            setattr(_deadlines, _name, lambda *args, **kwargs: None)

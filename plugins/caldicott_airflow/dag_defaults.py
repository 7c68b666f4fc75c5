"""What every Caldicott DAG shares: owner, retries with backoff, failure notification, tags.

DAG files call :func:`default_args` and :data:`COMMON_TAGS`; the DAG integrity tests check each DAG
has these, so a new DAG cannot quietly go without an on-call alert.
"""

from __future__ import annotations

import datetime as dt

from caldicott_airflow.notifiers import OnCallNotifier

OWNER = "caldicott"
COMMON_TAGS = ["caldicott"]


def default_args(**overrides) -> dict:
    """Task defaults: 3 retries, exponential backoff from 1 minute to 30, on-call alert on failure."""
    args = {
        "owner": OWNER,
        "retries": 3,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,  # a multiplier in Airflow 3.3: 1, 2, 4 ... minutes
        "max_retry_delay": dt.timedelta(minutes=30),
        "on_failure_callback": [OnCallNotifier()],
    }
    args.update(overrides)
    return args

"""What every Caldicott DAG shares: owner, retries with backoff, a time limit, failure notification, tags.

DAG files call :func:`default_args` and :data:`COMMON_TAGS`; the DAG integrity tests check each DAG
has these, so a new DAG cannot quietly go without an on-call alert or a time limit.

**Why every task has an ``execution_timeout``.** A task that hangs (a peer that accepts the TCP connection and
then says nothing, a database lock never released) holds a worker slot and never fails, so it never retries and
never alerts: the on-call notifier only hears about failures. With a limit, Airflow kills the try, the task
retries with backoff and, if it keeps hanging, fails and pages someone. The limit applies to each try (to each
poke of a sensor in ``reschedule`` mode). Human-in-the-loop steps are not bounded by it: Airflow's HITL
operators clear ``execution_timeout`` and wait for their own ``response_timeout`` (the approval and
submission-window waits). The limits, per flow, are in docs/deployment.md, "Time limits".
"""

from __future__ import annotations

import datetime as dt

from caldicott_airflow.notifiers import OnCallNotifier

OWNER = "caldicott"
COMMON_TAGS = ["caldicott"]

#: Each try of a task may run this long before Airflow kills it (a retry follows). The slowest routine task
#: measured (bench/RESULTS.md: a month's data set build at national scale, ~15 s; a day of letters, seconds)
#: is far inside it; a DAG with heavier tasks passes its own (``default_args(execution_timeout=...)``).
EXECUTION_TIMEOUT = dt.timedelta(hours=1)


def default_args(**overrides) -> dict:
    """Task defaults: 3 retries, exponential backoff from 1 minute to 30, an hour per try, on-call alert on failure.

    ``overrides`` replace any of them for one DAG (e.g. ``execution_timeout=dt.timedelta(hours=3)``); a task that
    needs another limit sets ``execution_timeout`` itself.
    """
    args = {
        "owner": OWNER,
        "retries": 3,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,  # a multiplier in Airflow 3.3: 1, 2, 4 ... minutes
        "max_retry_delay": dt.timedelta(minutes=30),
        "execution_timeout": EXECUTION_TIMEOUT,
        "on_failure_callback": [OnCallNotifier()],
    }
    args.update(overrides)
    return args

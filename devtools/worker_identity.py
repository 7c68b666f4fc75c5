"""``[core] hostname_callable`` for local Celery workers: several workers on one machine, told apart.

Airflow records the hostname of the machine that ran a task instance; on one machine every worker would
report the same name. A worker started with ``CALDICOTT_WORKER_NAME=w1`` and
``AIRFLOW__CORE__HOSTNAME_CALLABLE=devtools.worker_identity.hostname`` reports ``w1`` instead, so a test
can see which Celery worker ran a task. Not for production (real workers have real hostnames).
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("CALDICOTT_WORKER_NAME") or socket.getfqdn()

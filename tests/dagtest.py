"""Running a DAG with ``airflow dags test`` from a test (see tests/dagtest_site/sitecustomize.py)."""

from __future__ import annotations

import os
from pathlib import Path

SITE = Path(__file__).resolve().parent / "dagtest_site"


def without_deadlines(env: dict[str, str]) -> dict[str, str]:
    """``env`` for an ``airflow dags test`` subprocess whose DAGs carry no deadline alert (Airflow 3.3.2 bug)."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(SITE), env.get("PYTHONPATH", "")])}

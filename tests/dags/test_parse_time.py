"""Each DAG file imports on its own in a fresh interpreter, with only include/ and plugins/ on the path,
as the dag-processor would import it. Only that it imports is asserted: timings belong to the benchmark
(``python -m bench.dag_parse``), since machines here are noisy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted(p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))

PROBE = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='dag_file_probe')"


def fresh_env(airflow_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT / "plugins")]),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    })
    return env


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_in_a_fresh_interpreter(path, tmp_path):
    res = subprocess.run([sys.executable, "-c", PROBE, str(path)], env=fresh_env(tmp_path), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{path.name} failed to import:\n{res.stderr[-3000:]}"

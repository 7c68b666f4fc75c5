"""Where the checkout keeps its local state. Everything lives under the checkout, nothing in $HOME."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VAR = ROOT / "var"
DEMO = VAR / "demo"
AIRFLOW_HOME = ROOT / ".airflow"
DAGS = ROOT / "dags"
PLUGINS = ROOT / "plugins"
INCLUDE = ROOT / "include"


def venv_bin(name: str) -> str:
    return str(VENV / "bin" / name)

"""Fault injection inside the e2e Airflow's task processes: a test-only ``sitecustomize`` (never deployed).

Only ``tests/e2e/conftest.py`` puts this folder on a PYTHONPATH: that of the e2e Airflow it starts (not the
demo's, not a deployment's), together with ``CALDICOTT_E2E_FAULTS`` naming a control file
(:func:`tests.faults.e2e_airflow_env`). Python imports ``sitecustomize`` as every process starts; with the
variable set, this one arranges for ``caldicott.gateway.release`` to be wrapped as that module is imported. The
wrapper reads the control file at each call and, when it names the running task (Airflow exports
``AIRFLOW_CTX_DAG_ID``, ``..._TASK_ID`` and ``..._DAG_RUN_ID`` to the task process), releases through
:class:`tests.faults.CrashAfter`: after N sends the task fails with ``AirflowFailException`` (no retry), the
items it had claimed left ``sending``, as a crashed worker leaves them. The DAG, its params and the production
code know nothing of it; everything else runs as deployed, through the real scheduler and executor.

Without the variable, or without a control file, or in any other task, this module does nothing else.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys

CONTROL_ENV = "CALDICOTT_E2E_FAULTS"   # tests.faults.CONTROL_ENV (not imported: this runs before anything)
TARGET = "caldicott.gateway"
HERE = os.path.dirname(os.path.abspath(__file__))


def _armed() -> dict | None:
    """The control file's spec if it names the task this process runs, else None."""
    try:
        with open(os.environ[CONTROL_ENV]) as fh:
            spec = json.load(fh)
    except (KeyError, OSError, ValueError):
        return None
    running = {k: os.environ.get(f"AIRFLOW_CTX_{k.upper()}") for k in ("dag_id", "task_id", "dag_run_id")}
    wanted = {"dag_id": spec.get("dag_id"), "task_id": spec.get("task_id"), "dag_run_id": spec.get("run_id")}
    return spec if running == wanted else None


def _fault(spec: dict, channel: str):
    """What the wrapper raises: first a line in the fired log, so the test knows the crash was this one."""

    def make(message: str) -> BaseException:
        from airflow.sdk.exceptions import AirflowFailException

        entry = {"dag_id": spec["dag_id"], "task_id": spec["task_id"], "run_id": spec["run_id"],
                 "try_number": os.environ.get("AIRFLOW_CTX_TRY_NUMBER"), "channel": channel,
                 "after_sends": spec["after_sends"], "pid": os.getpid()}
        with open(os.environ[CONTROL_ENV] + ".fired", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        return AirflowFailException(message)

    return make


def _patch(gateway) -> None:
    original = gateway.release

    @functools.wraps(original)
    def release(items, sender, state_engine, **kw):
        spec = _armed()
        if spec is not None:
            from tests.faults import CrashAfter

            sender = CrashAfter(sender, int(spec["after_sends"]), fault=_fault(spec, sender.channel))
        return original(items, sender, state_engine, **kw)

    gateway.release = release


class _PatchingLoader(importlib.abc.Loader):
    """The real loader of ``caldicott.gateway``, then :func:`_patch` before anyone can bind ``release``."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _patch(module)

    def __getattr__(self, name):   # get_source, get_code ...: the real loader's
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def _chain() -> None:
    """Run the ``sitecustomize`` this one shadows, if there is one (a distribution's, say)."""
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.environ.get(CONTROL_ENV):
    sys.meta_path.insert(0, _Finder())
_chain()

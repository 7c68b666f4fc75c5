"""Local stand-in peers (MESH sandbox, SMTP, SFTP) that the demo and the tests start on loopback.

Each module here defines a peer class usable as a context manager in tests, and a function
``start_for_demo(workdir: Path) -> Peer`` that the demo calls; a started peer exposes ``airflow_env()``
(the ``AIRFLOW_CONN_*`` variables that point Caldicott at it) and ``stop()``. The demo discovers every
module in this package that has ``start_for_demo``, so adding a peer needs no edit elsewhere. A
``start_for_demo`` that also takes ``records_db`` is given the records source (seeded first), for peers that serve
the organisations in it (the receiving providers' MESH mailboxes and SFTP connections: ``devtools/providers.py``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Protocol


class Peer(Protocol):
    name: str

    def airflow_env(self) -> dict[str, str]: ...

    def stop(self) -> None: ...


def start_all_for_demo(workdir: Path, records_db: Path | None = None) -> list[Peer]:
    """Start every peer that offers itself to the demo; stop those started if one fails."""
    started: list[Peer] = []
    try:
        for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{__name__}.{mod.name}")
            if hasattr(module, "start_for_demo"):
                start = module.start_for_demo
                if "records_db" in inspect.signature(start).parameters:
                    started.append(start(workdir, records_db=records_db))
                else:
                    started.append(start(workdir))
    except BaseException:
        for p in started:
            p.stop()
        raise
    return started

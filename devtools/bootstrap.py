"""Prepare a checkout to run: seed the synthetic records, migrate the state DB and Airflow's metadata DB.

``python -m devtools.bootstrap`` (``make demo`` and ``make test`` call it). Idempotent: the records are
re-seeded only when the requested size or seed, or the generator's code, changed, and each migration is a
no-op when current.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from caldicott.db import make_engine, sqlite_url
from caldicott.records import synth
from caldicott.state.migrate import migrate

from devtools.airflow_env import airflow_env
from devtools.paths import AIRFLOW_HOME, DEMO
from devtools.stack import migrate_metadata

log = logging.getLogger("devtools.bootstrap")

DEMO_PATIENTS = int(os.environ.get("CALDICOTT_DEMO_PATIENTS", "2000"))
DEMO_SEED = int(os.environ.get("CALDICOTT_DEMO_SEED", "7"))


@dataclass(frozen=True)
class Workspace:
    """The files of one local deployment (the demo's, or a test session's)."""

    root: Path

    @property
    def records_db(self) -> Path:
        return self.root / "records.db"

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def keys_dir(self) -> Path:
        """Synthetic peers' private keys (the GP practices' side): never the service's own."""
        return self.root / "peer-keys"

    @property
    def manifest(self) -> Path:
        return self.root / "records.manifest.json"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"


def generator_fingerprint() -> str:
    """The generator's own source, hashed: a checkout whose generator changed (a new field, a new contract
    format) re-seeds its demo records instead of running the flows on data the new code never makes."""
    return hashlib.sha256(Path(synth.__file__).read_bytes()).hexdigest()[:16]


def seed(ws: Workspace, patients: int = DEMO_PATIENTS, seed_value: int = DEMO_SEED) -> bool:
    """(Re)fill the records DB unless it already holds this size and seed from this generator.
    Returns True if it seeded."""
    generator = generator_fingerprint()
    if ws.records_db.exists() and ws.manifest.exists():
        m = json.loads(ws.manifest.read_text())
        if (m.get("patients"), m.get("seed"), m.get("generator")) == (patients, seed_value, generator):
            return False
    ws.root.mkdir(parents=True, exist_ok=True)
    result = synth.generate(patients, seed_value, keys_dir=ws.keys_dir)
    synth.write(result, make_engine(sqlite_url(ws.records_db)), manifest_path=ws.manifest)
    ws.manifest.write_text(json.dumps({**json.loads(ws.manifest.read_text()), "generator": generator}, indent=2))
    return True


def prepare(ws: Workspace, home: Path, *, patients: int = DEMO_PATIENTS, seed_value: int = DEMO_SEED,
            api_port: int = 8080, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Seed, migrate both databases; return the Airflow environment for this workspace."""
    seeded = seed(ws, patients, seed_value)
    migrate(make_engine(sqlite_url(ws.state_db)))
    ws.outputs.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home, records_db=ws.records_db, state_db=ws.state_db, output_dir=ws.outputs,
                      api_port=api_port, extra=extra)
    marker = home / ".migrated"
    if not marker.exists():
        migrate_metadata(env)
        marker.write_text("ok\n")
    log.info("workspace ready: %s (records %s)", ws.root, "seeded" if seeded else "unchanged")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=DEMO_PATIENTS)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare(Workspace(DEMO), AIRFLOW_HOME, patients=args.patients, seed_value=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

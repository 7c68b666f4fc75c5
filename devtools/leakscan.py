"""Scan Airflow's metadata database and task logs for any patient value from the records source.

Invariant 2 says no patient data in Airflow: XCom, DAG run conf, HITL details, notes, rendered fields,
logs. This reads *every* text value of every table in the metadata database, every file under the
Airflow home's logs, and any extra text given (the demo's printed output), and looks for every NHS
number, full name, birth date, postcode and e-mail address of every synthetic patient.

``python -m devtools.leakscan --records var/demo/records.db --airflow-home .airflow``
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

# tables holding Airflow's own code and config, not run data (and large): skipped to keep the scan fast
SKIP_TABLES = {"dag_code", "serialized_dag", "alembic_version", "ab_permission", "ab_view_menu"}


@dataclass
class ScanResult:
    values_searched: int = 0
    bytes_scanned: int = 0
    sources: int = 0
    hits: list[tuple[str, str]] = field(default_factory=list)   # (kind, where) — never the value itself


def patient_values(records_db: Path) -> dict[str, set[str]]:
    """Every identifying value of every patient in a SQLite records source, by kind."""
    con = sqlite3.connect(f"file:{records_db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT nhs_number, given_name, family_name, birth_date, postcode, email FROM patient")
        vals: dict[str, set[str]] = {"nhs_number": set(), "name": set(), "birth_date": set(), "postcode": set(),
                                     "email": set()}
        for nhs, given, family, birth, postcode, email in rows:
            if nhs:
                vals["nhs_number"].add(nhs)
            vals["name"].add(f"{given} {family}")
            if birth:
                vals["birth_date"].add(str(birth)[:10])
            if postcode:
                vals["postcode"].add(postcode)
            if email:
                vals["email"].add(email)
        return vals
    finally:
        con.close()


def _metadata_texts(metadata_url: str):
    engine = create_engine(metadata_url)
    try:
        insp = inspect(engine)
        with engine.connect() as conn:
            for table in insp.get_table_names():
                if table in SKIP_TABLES:
                    continue
                cols = [c["name"] for c in insp.get_columns(table)]
                quoted = ", ".join(f'"{c}"' for c in cols)
                rows = conn.execute(text(f'SELECT {quoted} FROM "{table}"'))
                chunk = []
                for row in rows:
                    for v in row:
                        if v is None:
                            continue
                        if isinstance(v, bytes | bytearray | memoryview):
                            v = bytes(v).decode("utf-8", errors="ignore")
                        chunk.append(str(v))
                yield f"metadata:{table}", "\n".join(chunk)
    finally:
        engine.dispose()


def _file_texts(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.stat().st_size < 200_000_000:
            yield f"file:{path}", path.read_bytes().decode("utf-8", errors="ignore")


_TEN_DIGITS = re.compile(r"(?<!\d)\d{10}(?!\d)")
_DATES = re.compile(r"\d{4}-\d{2}-\d{2}")
_POSTCODE = re.compile(r"[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def scan(records_db: Path, airflow_home: Path, metadata_url: str | None = None,
         extra_texts: dict[str, str] | None = None) -> ScanResult:
    vals = patient_values(records_db)
    postcodes = vals["postcode"] | {p.replace(" ", "") for p in vals["postcode"]}
    result = ScanResult(values_searched=sum(len(v) for v in vals.values()))
    metadata_url = metadata_url or f"sqlite:///{airflow_home / 'airflow.db'}"
    sources = [*_metadata_texts(metadata_url), *_file_texts(airflow_home / "logs"),
               *(_file_texts(airflow_home / "stack-logs") if (airflow_home / "stack-logs").exists() else []),
               *((extra_texts or {}).items())]
    for where, body in sources:
        result.sources += 1
        result.bytes_scanned += len(body)
        found = {
            "nhs_number": set(_TEN_DIGITS.findall(body)) & vals["nhs_number"],
            "birth_date": set(_DATES.findall(body)) & vals["birth_date"],
            "postcode": set(_POSTCODE.findall(body)) & postcodes,
            "email": set(_EMAIL.findall(body)) & vals["email"],
            "name": {n for n in vals["name"] if n in body},
        }
        result.hits += [(kind, where) for kind, hits in found.items() for _ in hits]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--airflow-home", type=Path, required=True)
    args = parser.parse_args(argv)
    r = scan(args.records, args.airflow_home)
    print(f"searched {r.values_searched} patient values in {r.sources} sources ({r.bytes_scanned:,} bytes): "
          f"{len(r.hits)} found")
    for kind, where in r.hits:
        print(f"  {kind} in {where}")
    return 1 if r.hits else 0


if __name__ == "__main__":
    raise SystemExit(main())

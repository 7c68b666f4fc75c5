"""The leak scanner finds a planted patient value in any table or log, and reports where, not what."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from devtools.leakscan import scan


def _records_db(synth_source) -> Path:
    return Path(synth_source.url.split("///", 1)[1])


def test_scanner_finds_each_kind_of_planted_value(tmp_path, synth_source):
    pat = synth_source.result.frames["patient"].iloc[3]
    home = tmp_path / "airflow"
    (home / "logs" / "dag_id=x").mkdir(parents=True)
    con = sqlite3.connect(home / "airflow.db")
    con.execute("CREATE TABLE xcom (value BLOB)")
    con.execute("INSERT INTO xcom VALUES (?)", (f'{{"n": "{pat.nhs_number}"}}'.encode(),))
    con.commit()
    con.close()
    (home / "logs" / "dag_id=x" / "attempt=1.log").write_text(
        f"processing {pat.given_name} {pat.family_name} born {pat.birth_date} at {pat.postcode}\n")
    result = scan(_records_db(synth_source), home)
    kinds = {k for k, _ in result.hits}
    assert {"nhs_number", "name", "birth_date", "postcode"} <= kinds
    assert all(str(pat.nhs_number) not in where for _, where in result.hits)
    assert result.values_searched > 4 * len(synth_source.result.frames["patient"]) * 0.9


def test_clean_home_has_no_hits(tmp_path, synth_source):
    home = tmp_path / "airflow"
    (home / "logs").mkdir(parents=True)
    sqlite3.connect(home / "airflow.db").close()
    (home / "logs" / "a.log").write_text("sent 12 letters; quarantined 2 (invalid_nhs_number: 2)\n")
    assert scan(_records_db(synth_source), home).hits == []

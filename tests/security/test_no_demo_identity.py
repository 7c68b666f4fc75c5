"""The demo's sending service stays in devtools (issue 14: demo defaults live in tests/ and devtools/, production
defaults fail closed). Its identifying values — the synthetic service's name, ODS code ``ZZZ01``, the clinician's
SDS user id ``999000000001``, the demo e-mail domain — must not reappear as defaults in the GP letters code that
production runs: the letters and data set packages, their DAGs and the Airflow adapters."""

from __future__ import annotations

from pathlib import Path

from devtools.demo_service import DEMO_SERVICE

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = [ROOT / "include" / "caldicott" / "letters", ROOT / "include" / "caldicott" / "updates",
              ROOT / "include" / "caldicott" / "transport", ROOT / "include" / "caldicott" / "dataset",
              ROOT / "dags", ROOT / "plugins" / "caldicott_airflow"]
NOT_YET: set[Path] = set()
VALUES = [DEMO_SERVICE["name"], DEMO_SERVICE["address"], DEMO_SERVICE["ods_code"],
          DEMO_SERVICE["clinician"]["sds_user_id"], "talkingtherapies.nhs.example", "fhir.caldicott.invalid"]


def _sources() -> list[Path]:
    out: list[Path] = []
    for p in PRODUCTION:
        out += [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.suffix in (".py", ".j2", ".json"))
    return [p for p in out if p not in NOT_YET]


def test_the_demo_service_is_nowhere_in_production_code():
    files = _sources()
    assert len(files) > 20
    found = [f"{p.relative_to(ROOT)}: {v!r}" for p in files for v in VALUES if v in p.read_text(encoding="utf-8")]
    assert found == [], "a demo value is a production default again"

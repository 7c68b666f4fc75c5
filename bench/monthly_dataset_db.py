"""National-scale month READ FROM a records database file, through every default output (issue 12, item 5).

``python -m bench.monthly_dataset_db [--referrals 1000000] [--fractions 0.125,0.25,0.5,1]``

Setup (timed, not in the headline): one SQLite records file per scale, filled from
:func:`bench.monthly_dataset.national_month` (with the v2.1 tables at the shares synth.py gives a normal service)
by :func:`caldicott.records.synth.write` (executemany in one transaction, secondary indexes rebuilt after).

Headline, one fresh process per scale (so peak RSS and CPU are that run's alone): what the DAG runs by default
for one submission, from that file: ``pipeline.build_validate_write`` (read_source, build + pre-2020 rule,
screen + quarantine into the state database, encrypted archive with Parquet + IDB CSVs, opt-out statement,
quarantine.csv, report), then ``mpi_numbers`` (the NDOP request's numbers, decrypting the archive) and
``planning_extract`` (the commissioner extract, decrypting it again; NDOP answered for every number).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.results import peak_rss_mib

PERIOD_KEY = "2026-09"


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(np.arange(1, n + 1).astype(str), width)).astype(object)


def records_frames(referrals: int, seed: int = 1) -> dict[str, pd.DataFrame]:
    """The records tables (schema names) of one national month, from the bench's numpy generator."""
    from caldicott.records import schema

    from bench.monthly_dataset import national_month

    src = national_month(referrals, int(referrals * 2.5), referrals * 5, seed=seed)
    rng = np.random.default_rng([seed, 21])
    pat = src.patients.copy()
    n_pat = len(pat)
    pat["given_name"], pat["family_name"], pat["copy_channel"] = "Ava", "Smith", "post"
    pat["gp_sharing_consent"] = True
    pat["gender_identity"] = np.where(pat["gender"] == "9", "X", pat["gender"])
    pat["gender_same_at_birth"] = "Y"
    pat["preferred_language"] = "en"
    pat["ex_armed_forces"] = "02"
    ref = src.referrals.copy()
    ref["presenting_problem_significance"] = "1"
    ref["previous_diagnosed_condition"] = "N"
    ref["onset_month"] = "2026-01"
    pids, rids = pat["local_patient_id"].to_numpy(), ref["service_request_id"].to_numpy()
    # shares as synth.py draws them: social circumstances 0.70 + 0.55 per patient, previous diagnoses ~0.3,
    # overseas visitors 2%, care clusters 10%; internet-enabled therapy: 35% of treated referrals, 1-3 logs
    so, rl = np.flatnonzero(rng.random(n_pat) < 0.70), np.flatnonzero(rng.random(n_pat) < 0.55)
    s_pat = np.concatenate([so, rl])
    circ = pd.DataFrame({"circumstance_id": _ids("SOC", len(s_pat), 8), "local_patient_id": pids[s_pat],
                         "snomed_code": np.concatenate([np.full(len(so), "20430005"), np.full(len(rl), "309884000")]),
                         "recorded_date": np.datetime64("2025-06-01")})
    circ.loc[rng.choice(len(circ), max(1, len(circ) // 1000), replace=False), "snomed_code"] = "heterosexual"
    dx = np.flatnonzero(rng.random(n_pat) < 0.3)
    diag = pd.DataFrame({"diagnosis_id": _ids("DX", len(dx), 8), "local_patient_id": pids[dx],
                         "scheme": "01", "code": rng.choice(np.array(["F321", "F411", "F431"]), len(dx)),
                         "diagnosis_date": np.datetime64("2024-03-01")})
    diag.loc[rng.choice(len(diag), max(1, len(diag) // 1000), replace=False), "code"] = "F32"
    ov = np.flatnonzero(rng.random(n_pat) < 0.02)
    overseas = pd.DataFrame({"visitor_id": _ids("OV", len(ov), 7), "local_patient_id": pids[ov],
                             "charging_category": rng.choice(np.array(["A", "B", "C"]), len(ov)),
                             "applicable_date": np.datetime64("2026-01-01")})
    cl = np.flatnonzero(rng.random(n_pat) < 0.10)
    clusters = pd.DataFrame({"cluster_id": _ids("CLU", len(cl), 7), "local_patient_id": pids[cl],
                             "cluster_code": rng.choice(np.array(["01", "02", "03"]), len(cl)),
                             "start_at": np.datetime64("2026-08-01T10:00"), "end_at": None})
    treated = np.flatnonzero(rng.random(len(rids)) < 0.35 * 0.85)
    n_logs = rng.choice(np.array([1, 2, 3]), len(treated), p=[0.5, 0.35, 0.15])
    l_ref = np.repeat(treated, n_logs)
    received = pd.to_datetime(ref["received_date"]).to_numpy().astype("datetime64[D]")[l_ref]
    l_start = np.maximum(received, np.datetime64("2026-09-02") + rng.integers(0, 20, len(l_ref))
                         .astype("timedelta64[D]"))
    logs = pd.DataFrame({"log_id": _ids("ITL", len(l_ref), 9), "service_request_id": rids[l_ref],
                         "start_date": l_start, "end_date": np.minimum(l_start + np.timedelta64(7, "D"),
                                                                       np.datetime64("2026-09-30")),
                         "programme": rng.choice(np.array(["01", "02", "03"]), len(l_ref)),
                         "duration_minutes": rng.choice(np.array([15, 30, 45]), len(l_ref)),
                         "care_pers_local_id": np.char.add("CL", rng.integers(100, 999, len(l_ref)).astype(str)),
                         "integrated_software": "Y"})
    logs.loc[rng.choice(len(logs), max(1, len(logs) // 1000), replace=False), "programme"] = "ZQ"
    clin = src.qualifications["care_pers_local_id"].to_numpy()
    people = pd.DataFrame({"care_pers_local_id": clin, "display_name": "Sam Clinician"})
    frames = {name: pd.DataFrame() for name in schema.metadata.tables}
    frames.update({
        "gp_practice": pd.DataFrame({"ods_code": ["Z80000"], "name": ["Synthetic Practice"], "channel": ["mesh"]}),
        "organisation": pd.DataFrame({"ods_code": ["ZC1", "RR8"], "name": ["ICB", "Provider"],
                                      "kind": ["commissioner", "provider"]}),
        "patient": pat, "referral": ref, "care_contact": src.contacts, "coded_assessment": src.assessments,
        "accommodation_status": src.accommodation, "employment_status": src.employment, "disability": src.disability,
        "social_circumstance": circ, "overseas_visitor": overseas, "previous_diagnosis": diag,
        "care_cluster": clusters, "onward_referral": src.onward, "waiting_time_pause": src.pauses,
        "long_term_condition": src.conditions, "internet_therapy_log": logs, "care_personnel": people,
        "care_personnel_qualification": src.qualifications})
    return frames


def make_db(path: Path, referrals: int) -> dict:
    """Write one national month's records file; returns row counts and timings."""
    from caldicott.db import make_engine, sqlite_url
    from caldicott.records import synth

    t0 = time.perf_counter()
    frames = records_frames(referrals)
    t1 = time.perf_counter()
    engine = make_engine(sqlite_url(path))
    synth.write(synth.SynthResult(frames=frames), engine)
    engine.dispose()
    t2 = time.perf_counter()
    return {"generate_s": t1 - t0, "load_s": t2 - t1, "rows": int(sum(len(f) for f in frames.values())),
            "bytes": path.stat().st_size}


def headline(db: Path) -> dict:
    """Every default step for one submission, from the records file (run in a fresh process)."""
    from caldicott.dataset import pipeline, rules
    from caldicott.dataset.builder import Period
    from caldicott.dataset.writer import load_key, new_key
    from caldicott.db import make_engine, sqlite_url
    from caldicott.state.migrate import migrate

    from devtools.demo_service import DEMO_SERVICE

    period = Period.month(2026, 9)
    with tempfile.TemporaryDirectory() as d:
        state = make_engine(sqlite_url(Path(d) / "state.db"))
        migrate(state)
        s = pipeline.Settings(work_dir=Path(d) / "out", key=load_key(new_key()), org_provider=DEMO_SERVICE["ods_code"],
                              provider_name="Synthetic Talking Therapies")
        records = make_engine(sqlite_url(db), readonly=True)
        w0, c0 = time.perf_counter(), time.process_time()
        res = pipeline.build_validate_write(records, state, period, s)
        w1, c1 = time.perf_counter(), time.process_time()
        numbers = pipeline.mpi_numbers(state, period, s)
        _blob, counts = pipeline.planning_extract(state, period, s, set(numbers[::500]), set(numbers), "bench")
        w2, c2 = time.perf_counter(), time.process_time()
    t = res["timing_s"]
    bvw = w1 - w0
    stages = {"read": t["read_s"], "build": t["build_s"], "validate": t["validate_s"], "write": t["write_s"]}
    stages["report + state"] = bvw - sum(stages.values())
    stages["NDOP numbers + commissioner extract"] = w2 - w1
    return {"wall_s": w2 - w0, "cpu_s": c2 - c0, "bvw_cpu_s": c1 - c0, "extract_cpu_s": c2 - c1,
            "stages": stages, "peak_mib": peak_rss_mib(), "rows": res["rows"], "quarantined": res["quarantined"],
            "by_rule": res["quarantined_by_rule"], "blanked": res["blanked_by_rule"],
            "rules": len(rules.REGISTRY), "archive_bytes": res["archive_bytes"], "ndop_numbers": len(numbers),
            "extract": counts["planning"]}


def run_child(db: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.monthly_dataset_db", "--child", str(db)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--referrals", type=int, default=1_000_000)
    p.add_argument("--fractions", default="0.125,0.25,0.5,1")
    p.add_argument("--repeats", type=int, default=1, help="headline runs at full scale (median reported)")
    p.add_argument("--child", type=Path)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    a = p.parse_args()
    if a.child:
        print(json.dumps(headline(a.child), default=str))
        return
    results = []
    with tempfile.TemporaryDirectory() as d:
        for f in [float(x) for x in a.fractions.split(",")]:
            n = int(a.referrals * f)
            db = Path(d) / f"records_{n}.db"
            setup = make_db(db, n)
            print(f"setup {n:,} referrals: {json.dumps(setup)}", flush=True)
            runs = [run_child(db) for _ in range(a.repeats if f == 1 else 1)]
            for r in runs:
                print(f"headline {n:,}: {json.dumps(r, default=str)}", flush=True)
            results.append({"fraction": f, "referrals": n, "setup": setup, "runs": runs,
                            "load": os.getloadavg()})
            db.unlink()
    if a.out:
        a.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()


def section(results: list[dict], rt: dict | None, cmd: str, pg: str = "not run") -> str:
    """The RESULTS.md "Monthly data set" body from :func:`main`'s JSON (and the reference ratio, if run)."""
    import datetime as dt
    import statistics

    from bench.results import machine

    full = results[-1]
    runs = full["runs"]
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s", "peak_mib")}
    r0 = runs[len(runs) // 2] if len(runs) > 1 else runs[0]
    st = {k: statistics.median(r["stages"][k] for r in runs) for k in r0["stages"]}
    split = "\n".join(f"| {k} | {v:.1f} |" for k, v in st.items())
    lin = "\n".join(
        f"| {r['fraction']:g} | {r['referrals']:,} | "
        + " | ".join(f"{statistics.median(x['stages'][k] for x in r['runs']):.1f}" for k in ("read", "build",
                                                                                              "validate", "write"))
        + f" | {statistics.median(x['wall_s'] for x in r['runs']):.1f} | "
        f"{statistics.median(x['cpu_s'] for x in r['runs']):.1f} | "
        f"{statistics.median(x['wall_s'] for x in r['runs']) / results[0]['runs'][0]['wall_s']:.2f} | "
        f"{statistics.median(x['peak_mib'] for x in r['runs']):,.0f} | "
        f"{r['setup']['generate_s'] + r['setup']['load_s']:.0f} | {', '.join(f'{x:.1f}' for x in r['load'])} |"
        for r in results)
    rows = ", ".join(f"{k} {v:,}" for k, v in r0["rows"].items())
    body = f"""Command: `{cmd}` ({machine()}), {dt.date.today().isoformat()}. Each scale: a SQLite records file written
first (setup: numpy generator + `synth.write`, executemany in one transaction; not in the headline), then one fresh
process runs what the DAG runs by default for one submission from that file: `pipeline.build_validate_write`
(read_source, build + pre-2020 rule, screen + quarantine into the state database, encrypted archive with Parquet
**and** IDB CSVs, opt-out statement, quarantine.csv, report) and the commissioner extract step (`mpi_numbers`
and `planning_extract`: the archive decrypted twice, NDOP applied, extract encrypted, statement and report
rewritten). Not included: the refresh submission the same run builds (a second build of the month before, the
same cost again at the same size) and the transports (staging, MESH), timed in "Monthly data set submission
routes". Load average per scale in the table (the cores were otherwise idle apart from other helpers).

National month from the records file ({full['referrals']:,} referrals; file {full['setup']['bytes'] / 2**30:.1f}
GiB, {full['setup']['rows']:,} source rows; setup {full['setup']['generate_s']:.0f} s generation +
{full['setup']['load_s']:.0f} s load), {len(runs)} run(s), medians:

| stage | wall s |
|---|---|
{split}
| **headline: every default step** | **{med['wall_s']:.1f}** |

CPU {med['cpu_s']:.1f} s (process time); peak RSS {med['peak_mib']:,.0f} MiB. Aims: < 60 s wall
{'met' if med['wall_s'] < 60 else '**missed**'}, < 4 GiB peak {'met' if med['peak_mib'] < 4096 else '**missed**'}.
{r0['rules']} rules evaluated; {r0['quarantined']:,} records quarantined (removed) by rule:
{', '.join(f'{k} {v:,}' for k, v in r0['by_rule'].items()) or 'none'}; fields blanked by rule:
{', '.join(f'{k} {v:,}' for k, v in r0['blanked'].items()) or 'none'}. Archive {r0['archive_bytes'] / 2**20:,.0f} MiB.
Rows per table: {rows}.

Linearity (one file and one process per scale; s wall per stage, ratio = headline wall / the 1/8 figure):

| scale | referrals | read | build | validate | write | headline | CPU | ratio to 1/8 | peak MiB | setup s | load |
|---|---|---|---|---|---|---|---|---|---|---|---|
{lin}

PostgreSQL: {pg}.
"""
    if rt:
        cpu = rt["cpu"]
        body += f"""
Row-by-row reference (`bench/reference_monthly_dataset.py`, builder + the {rt['codes']} rules it implements; now
blanking the NHS number / postcode / birth date as `rules.screen` does, and a score out of range a warning) vs the
vectorised builder + all {rt['vectorised_rules']} rules, on a {rt['referrals']:,}-referral month generated in memory,
medians of {rt['repeats']} interleaved rounds: reference {rt['reference_s']:.1f} s,
vectorised {rt['vectorised_s']:.2f} s,
**ratio {rt['ratio']:.0f}x** (CPU {cpu['ratio']:.0f}x); like with like (same rules) {rt['same_rules_s']:.2f} s,
**ratio {rt['same_rules_ratio']:.0f}x** (CPU {cpu['same_rules_ratio']:.0f}x). Same quarantine decisions for the
shared rules: {rt['quarantine_agrees']}; same table counts: {rt['counts_agree']}.
"""
    return body

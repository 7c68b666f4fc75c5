"""National-scale monthly data set run READ FROM a records database file, every default step (issue 12, item 5).

``python -m bench.monthly_dataset_db [--referrals 1000000] [--fractions 0.125,0.25,0.5,1] [--postgres ADMIN_URL]``

Setup (timed, not in the headline): one SQLite records file per scale holding two national months of activity:
September 2026 from :func:`bench.monthly_dataset.national_month` (with the v2.1 tables at the shares synth.py gives
a normal service) and August 2026 (the same referrals' contacts, scores, therapy logs and onward referrals a month
earlier, new ids), written by :func:`caldicott.records.synth.write` (executemany in one transaction, secondary
indexes rebuilt after).

Headline, per scale: every task the monthly_dataset DAG runs by default for the run of October 2026 (primary
September, refresh August, staged route), in the DAG's order, from that file, each task in a fresh process of its
own as Airflow runs it (so its peak RSS and CPU are that task's alone), sharing one state database and work folder:
both ``build_validate_write`` (read_source, build + pre-2020 rule, screen + quarantine into the state database,
encrypted archive with Parquet + IDB CSVs, opt-out statement, quarantine.csv, report), both ``stage_submission``
(``submit`` through the release gateway to the staging folder), ``ndop_request`` (the NHS numbers of both archives,
decrypted) and ``commissioner_extract`` (the primary's numbers again, the extract with NDOP applied, encrypted and
staged through the gateway, the refresh's numbers and its opt-out statement). Left out, because they are waits on
other parties, not work: the named submitter's confirmation (HITL) and NHS England's NDOP reply (the request's MESH
send is timed in the NDOP peer tests); the calendar plan step is milliseconds. The DAG may run the two submission
groups side by side; the bench runs every task one after the other, so the wall figure is what one core-at-a-time
run costs.

With ``--postgres``, the full-scale headline once more with the records written into a PostgreSQL database of
their own on that server (``synth.write``: COPY), which the builds then read through ``COPY ... TO STDOUT``.
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

from bench.results import machine_cpu_s, peak_rss_mib

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


#: The month before (the refresh's) as a shifted copy of these tables' rows: same referrals, a month earlier.
EARLIER = {"care_contact": ("contact_at",), "coded_assessment": ("assessed_at",),
           "internet_therapy_log": ("start_date", "end_date"), "onward_referral": ("referred_at",)}
#: Ids given a prefix in the copy (its own row ids and the contact an assessment belongs to).
COPIED_IDS = ("care_contact_id", "assessment_id", "log_id", "onward_referral_id")


def with_month_before(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``frames`` plus August's activity: each activity row again 30 days earlier (September's days fall in
    August) under a new id. A referral received in September has no August referral to belong to, so its copies
    stay out of August's file, as they would in a real source."""
    out = dict(frames)
    for table, instants in EARLIER.items():
        early = frames[table].copy()
        for col in instants:
            early[col] = pd.to_datetime(early[col]) - pd.Timedelta(days=30)
        for col in COPIED_IDS:
            if col in early:
                early[col] = "A" + early[col].astype(object)
        out[table] = pd.concat([frames[table], early], ignore_index=True)
    return out


#: The database the PostgreSQL run writes its records into (dropped and made afresh; dropped again at the end).
PG_DATABASE = "caldicott_bench_records"


def make_pg(admin_url: str, referrals: int) -> tuple[str, dict]:
    """The same two months written into a PostgreSQL database of their own (COPY, indexes rebuilt after, then
    ANALYZE, as a server's autovacuum would have done for a database that holds them); its URL and the timings."""
    from caldicott.db import make_engine
    from caldicott.records import synth
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {PG_DATABASE}"))
        conn.execute(text(f"CREATE DATABASE {PG_DATABASE}"))
    admin.dispose()
    url = make_url(admin_url).set(database=PG_DATABASE).render_as_string(hide_password=False)
    t0 = time.perf_counter()
    frames = with_month_before(records_frames(referrals))
    t1 = time.perf_counter()
    engine = make_engine(url)
    synth.write(synth.SynthResult(frames=frames), engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    engine.dispose()
    return url, {"generate_s": t1 - t0, "load_s": time.perf_counter() - t1,
                 "rows": int(sum(len(f) for f in frames.values())), "bytes": int(size)}


def drop_pg(admin_url: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {PG_DATABASE}"))
    admin.dispose()


def make_db(path: Path, referrals: int) -> dict:
    """Write the records file (two national months of activity); returns row counts and timings."""
    from caldicott.db import make_engine, sqlite_url
    from caldicott.records import synth

    t0 = time.perf_counter()
    frames = with_month_before(records_frames(referrals))
    t1 = time.perf_counter()
    engine = make_engine(sqlite_url(path))
    synth.write(synth.SynthResult(frames=frames), engine)
    engine.dispose()
    t2 = time.perf_counter()
    return {"generate_s": t1 - t0, "load_s": t2 - t1, "rows": int(sum(len(f) for f in frames.values())),
            "bytes": path.stat().st_size}


#: The DAG's tasks that do work, in the order a run does them; each runs in a process of its own, as Airflow runs
#: each task (so a task's peak memory is that task's alone, as on a worker).
TASKS = ("primary.build_validate_write", "refresh.build_validate_write", "primary.stage_submission",
         "refresh.stage_submission", "ndop_request", "commissioner_extract")
MONTHS = {"primary": (2026, 9), "refresh": (2026, 8)}


def records_engine(records: str):
    """The records source: a PostgreSQL URL, or a SQLite file opened read-only (as the demo's connection is)."""
    from caldicott.db import make_engine, sqlite_url

    return make_engine(records) if "://" in records else make_engine(sqlite_url(Path(records)), readonly=True)


def task(name: str, records: str, work: Path, key: str) -> dict:
    """Run one DAG task's work (what its @task body calls) against the records source (a file or a PostgreSQL URL)
    and the run's state in ``work``; returns its wall and CPU seconds, its process's peak RSS and what it reports."""
    from caldicott.dataset import pipeline, rules
    from caldicott.dataset.builder import Period
    from caldicott.dataset.submit import resolve_target, submit
    from caldicott.dataset.writer import load_key
    from caldicott.db import make_engine, sqlite_url
    from caldicott.transport.staging import StagingSender

    from devtools.demo_service import DEMO_SERVICE

    months = {k: Period.month(*ym) for k, ym in MONTHS.items()}
    state = make_engine(sqlite_url(work / "state.db"))
    s = pipeline.Settings(work_dir=work / "out", key=load_key(key), org_provider=DEMO_SERVICE["ods_code"],
                          provider_name="Synthetic Talking Therapies")
    staging = StagingSender(work / "staging")
    kind = name.split(".")[0]
    out: dict = {}
    w0, c0, m0 = time.perf_counter(), time.process_time(), machine_cpu_s()
    if name.endswith(".build_validate_write"):
        res = pipeline.build_validate_write(records_engine(records), state, months[kind], s, kind)
        out = {"stages": {k: res["timing_s"][f"{k}_s"] for k in ("read", "build", "validate", "write")},
               "rows": res["rows"], "quarantined": res["quarantined"], "by_rule": res["quarantined_by_rule"],
               "blanked": res["blanked_by_rule"], "rules": len(rules.REGISTRY), "archive_bytes": res["archive_bytes"]}
    elif name.endswith(".stage_submission"):
        sent = submit(state, months[kind], resolve_target("staged", None, submitter="bench-submitter"), staging, kind)
        assert sent["sent"] == 1, sent
    elif name == "ndop_request":
        out = {"ndop_numbers": len({n for k, p in months.items() for n in pipeline.mpi_numbers(state, p, s, k)})}
    else:                                                                       # commissioner_extract
        primary, refresh = months["primary"], months["refresh"]
        numbers = pipeline.mpi_numbers(state, primary, s)
        extract, counts = pipeline.planning_extract(state, primary, s, set(numbers[::500]), set(numbers), "bench")
        staged = pipeline.stage_extract(state, primary, s, extract, staging)
        assert staged["sent"] == 1, staged
        r_numbers = pipeline.mpi_numbers(state, refresh, s, "refresh")
        pipeline.record_optouts(state, refresh, s, "refresh", set(r_numbers[::500]), "bench")
        out = {"extract": counts["planning"]}
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "peak_mib": peak_rss_mib(),
            "machine_cpu_s": machine_cpu_s() - m0, **out}


def run_task(name: str, records: str, work: Path, key: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.monthly_dataset_db", "--task", name, "--child", records,
                          "--work", str(work)], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", "CALDICOTT_BENCH_KEY": key})
    return json.loads(out.stdout.strip().splitlines()[-1])


#: The run on two worker slots (Airflow's executor runs any tasks whose upstreams are done, up to its slots; this
#: machine has two cores): the DAG's graph lets the two submission groups run side by side, so each wave's tasks
#: start together, and a wave starts when the one before it is done. Every wave respects the DAG's dependencies:
#: stage_submission after its own build, ndop_request after both builds, commissioner_extract after ndop_request.
TWO_SLOT_WAVES = (("primary.build_validate_write", "refresh.build_validate_write"),
                  ("primary.stage_submission", "ndop_request"),
                  ("refresh.stage_submission", "commissioner_extract"))


def run_child(records: str, slots: int = 1) -> dict:
    """The whole default run: a fresh state database, then every task, one process each: one after another
    (``slots=1``: wall = the sum of the tasks'), or in :data:`TWO_SLOT_WAVES` (``slots=2``: wall = the sum of each
    wave's longest task; peak = the largest sum of one wave's tasks' peaks, as the machine holds them at once)."""
    from concurrent.futures import ThreadPoolExecutor

    from caldicott.dataset.writer import new_key
    from caldicott.db import make_engine, sqlite_url
    from caldicott.state.migrate import migrate

    with tempfile.TemporaryDirectory() as d:
        work, key = Path(d), new_key()
        migrate(make_engine(sqlite_url(work / "state.db")))
        if slots == 1:
            tasks = {name: run_task(name, records, work, key) for name in TASKS}
            waves = [(name,) for name in TASKS]
        else:
            tasks, waves = {}, list(TWO_SLOT_WAVES)
            with ThreadPoolExecutor(max_workers=2) as pool:
                for wave in waves:
                    tasks.update(zip(wave, pool.map(lambda n: run_task(n, records, work, key), wave), strict=True))
    builds = {k: tasks[f"{k}.build_validate_write"] for k in MONTHS}
    primary = builds["primary"]
    return {"slots": slots, "wall_s": sum(max(tasks[n]["wall_s"] for n in wave) for wave in waves),
            "cpu_s": sum(t["cpu_s"] for t in tasks.values()),
            "machine_cpu_s": sum(t["machine_cpu_s"] for t in tasks.values()) if slots == 1 else None,
            "peak_mib": max(sum(tasks[n]["peak_mib"] for n in wave) for wave in waves),
            "steps": {n: {k: t[k] for k in ("wall_s", "cpu_s", "peak_mib")} for n, t in tasks.items()},
            "stages": {k: sum(b["stages"][k] for b in builds.values()) for k in primary["stages"]},
            "rows": primary["rows"], "refresh_rows": builds["refresh"]["rows"], "quarantined": primary["quarantined"],
            "by_rule": primary["by_rule"], "blanked": primary["blanked"], "rules": primary["rules"],
            "archive_bytes": primary["archive_bytes"], "ndop_numbers": tasks["ndop_request"]["ndop_numbers"],
            "extract": tasks["commissioner_extract"]["extract"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--referrals", type=int, default=1_000_000)
    p.add_argument("--fractions", default="0.125,0.25,0.5,1")
    p.add_argument("--repeats", type=int, default=1, help="headline runs at full scale (median reported)")
    p.add_argument("--child", help="(internal) run one --task against this records file or URL")
    p.add_argument("--postgres", default="",
                   help="admin URL of a PostgreSQL server: the full-scale run again with the records there")
    p.add_argument("--no-two-slots", dest="two_slots", action="store_false",
                   help="skip the full-scale run on two worker slots (TWO_SLOT_WAVES)")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--work", type=Path)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    a = p.parse_args()
    if a.child:
        print(json.dumps(task(a.task, a.child, a.work, os.environ["CALDICOTT_BENCH_KEY"]), default=str))
        return
    results = []
    with tempfile.TemporaryDirectory() as d:
        for f in [float(x) for x in a.fractions.split(",")]:
            n = int(a.referrals * f)
            db = Path(d) / f"records_{n}.db"
            setup = make_db(db, n)
            print(f"setup {n:,} referrals: {json.dumps(setup)}", flush=True)
            runs = [run_child(str(db)) for _ in range(a.repeats if f == 1 else 1)]
            two = [run_child(str(db), slots=2)] if f == 1 and a.two_slots else []
            for r in runs + two:
                print(f"headline {n:,}: {json.dumps(r, default=str)}", flush=True)
            results.append({"fraction": f, "referrals": n, "setup": setup, "runs": runs, "two_slots": two,
                            "load": os.getloadavg()})
            db.unlink()
    if a.postgres:
        url, setup = make_pg(a.postgres, a.referrals)
        print(f"setup PostgreSQL {a.referrals:,} referrals: {json.dumps(setup)}", flush=True)
        try:
            runs = [run_child(url) for _ in range(a.repeats)]
            two = [run_child(url, slots=2)] if a.two_slots else []
        finally:
            drop_pg(a.postgres)
        for r in runs + two:
            print(f"headline PostgreSQL {a.referrals:,}: {json.dumps(r, default=str)}", flush=True)
        results.append({"fraction": 1.0, "referrals": a.referrals, "setup": setup, "runs": runs, "two_slots": two,
                        "load": os.getloadavg(), "source": "postgresql"})
    if a.out:
        a.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()


def section(results: list[dict], rt: dict | None, cmd: str, pg: str = "not run.") -> str:
    """The RESULTS.md "Monthly data set" body from :func:`main`'s JSON (and the reference ratio, if run)."""
    import datetime as dt
    import statistics

    from bench.results import machine

    on_pg = [r for r in results if r.get("source") == "postgresql"]
    results = [r for r in results if r.get("source") != "postgresql"]
    full = results[-1]
    runs = full["runs"]
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s", "peak_mib")}
    r0 = runs[len(runs) // 2] if len(runs) > 1 else runs[0]

    def steps_of(runs: list[dict]) -> str:
        return "\n".join(f"| {k} | {statistics.median(r['steps'][k]['wall_s'] for r in runs):.1f} | "
                         f"{statistics.median(r['steps'][k]['cpu_s'] for r in runs):.1f} | "
                         f"{statistics.median(r['steps'][k]['peak_mib'] for r in runs):,.0f} |"
                         for k in runs[0]["steps"])

    def split_of(runs: list[dict]) -> str:
        return ", ".join(f"{k} {statistics.median(r['stages'][k] for r in runs):.1f} s" for k in runs[0]["stages"])

    def two_slots(entry: dict) -> str:
        if not entry.get("two_slots"):
            return ""
        t = entry["two_slots"][0]
        b = [t["steps"][f"{k}.build_validate_write"] for k in MONTHS]
        return f"""

On two worker slots (the DAG lets its two submission groups run side by side, as Airflow's executor does with two
free slots; these 2 cores; waves `TWO_SLOT_WAVES`, each wave's longest task counted): **{t['wall_s']:.1f} s wall**
for the whole default run, the two builds {b[0]['wall_s']:.1f} s and {b[1]['wall_s']:.1f} s side by side (CPU
{t['cpu_s']:.1f} s in all); the machine held {t['peak_mib']:,.0f} MiB at most (both builds' peaks added: a worker
with one slot needs the largest task's figure above, one with two slots this). Aim < 60 s: \
{'met' if t['wall_s'] < 60 else '**missed**'}."""

    steps, split = steps_of(runs), split_of(runs)
    if on_pg:
        p_runs, p_setup = on_pg[0]["runs"], on_pg[0]["setup"]
        p_med = {k: statistics.median(r[k] for r in p_runs) for k in ("wall_s", "cpu_s", "peak_mib")}
        pg = f"""the same national month and tasks with the records in a PostgreSQL database on this machine (read
through `COPY`; database {p_setup['bytes'] / 2**30:.1f} GiB, setup {p_setup['generate_s']:.0f} s generation +
{p_setup['load_s']:.0f} s load; the CPU column is the task's own process: the server's work is in its own
processes, and the whole machine was busy {statistics.median(r['machine_cpu_s'] for r in p_runs):.1f} CPU s over the
run), {len(p_runs)} run(s), medians:

| DAG task | wall s | CPU s | peak RSS MiB |
|---|---|---|---|
{steps_of(p_runs)}
| **headline: the whole default run, records in PostgreSQL** | **{p_med['wall_s']:.1f}** | **{p_med['cpu_s']:.1f}** | \
**{p_med['peak_mib']:,.0f}** (largest task) |

Inside the two builds: {split_of(p_runs)}. Aims (< 60 s wall, < 4 GiB peak): wall \
{'met' if p_med['wall_s'] < 60 else '**missed**'}, memory {'met' if p_med['peak_mib'] < 4096 else '**missed**'}.\
{two_slots(on_pg[0])}"""
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
first (setup, not in the headline: numpy generator + `synth.write`; two months of activity, September and the same
referrals' August), then **every task of the monthly_dataset DAG that does work, by default**, for the October run,
from that file, one after another, each in a fresh process as Airflow runs a task: the primary (September) and the
refresh (August) each read,
built, validated, quarantined, written as the encrypted archive (Parquet and IDB CSVs) with its statement,
quarantine list and report; both staged through the release gateway; the NDOP request's numbers of both archives;
the commissioner extract (NDOP applied, encrypted, staged) and the refresh's opt-out statement. Not timed: the
waits on people and NHS England (the submitter's confirmation, the NDOP reply). Load average per scale in the table.

National month from the records file ({full['referrals']:,} referrals a month; file
{full['setup']['bytes'] / 2**30:.1f} GiB, {full['setup']['rows']:,} source rows; setup
{full['setup']['generate_s']:.0f} s generation + {full['setup']['load_s']:.0f} s load), {len(runs)} run(s), medians:

| DAG task | wall s | CPU s | peak RSS MiB |
|---|---|---|---|
{steps}
| **headline: the whole default run** | **{med['wall_s']:.1f}** | **{med['cpu_s']:.1f}** | \
**{med['peak_mib']:,.0f}** (largest task) |

Inside the two builds: {split}. Wall and CPU are the tasks' own work (not the interpreter's start and imports, which
Airflow pays per task too). Aims (< 60 s wall, < 4 GiB peak):
wall {'met' if med['wall_s'] < 60 else '**missed**'}, memory {'met' if med['peak_mib'] < 4096 else '**missed**'}.\
{two_slots(full)}

Primary: {r0['rules']} rules evaluated; {r0['quarantined']:,} records quarantined (removed) by rule:
{', '.join(f'{k} {v:,}' for k, v in r0['by_rule'].items()) or 'none'}; fields blanked by rule:
{', '.join(f'{k} {v:,}' for k, v in r0['blanked'].items()) or 'none'}. Archive {r0['archive_bytes'] / 2**20:,.0f} MiB.
Rows per table: {rows}. Refresh: {sum(r0['refresh_rows'].values()):,} rows.

Linearity (one file and one process per scale; read/build/validate/write summed over both submissions, s wall;
ratio = headline wall / the 1/8 figure; peak = the largest task's):

| scale | referrals | read | build | validate | write | headline | CPU | ratio to 1/8 | peak MiB | setup s | load |
|---|---|---|---|---|---|---|---|---|---|---|---|
{lin}

PostgreSQL: {pg}
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

"""Benchmark: a national-scale month of the IAPT data set read from a records database file and taken through
every default step of the DAG (issues 5 and 12).

``python -m bench.monthly_dataset [--referrals 1000000] [--fractions 0.125,0.25,0.5,1] [--repeats 1]
[--ratio-referrals 50000] [--ratio-repeats 3] [--postgres URL]``

1. Per scale: a SQLite records file of two months written first (setup, not counted), then one fresh process
   runs every step the DAG runs by default from it, primary and refresh (:mod:`bench.monthly_dataset_db`):
   wall and CPU per DAG step, peak RSS, the stage split, quarantine by rule, rows per table; the 1/8 .. full
   table. Then, when a PostgreSQL server answers (``--postgres``, default the local one; ``''`` skips), the
   full-scale run again with the records in a database there (read through ``COPY``).
2. Speed ratio against the row-by-row reference builder + validator (``bench/reference_monthly_dataset.py``)
   on a smaller month generated in memory (medians of ``--ratio-repeats`` interleaved rounds), with a check that
   both quarantine the same records for the rules both implement.

``--in-memory`` runs the earlier headline instead (frames generated with numpy, no read).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from caldicott.dataset import rules
from caldicott.dataset.builder import Period, SourceMonth, build, history
from caldicott.dataset.writer import load_key, new_key, write
from caldicott.policy.dataset import apply_pre2020
from caldicott.records.nhs_numbers import synthetic_numbers
from caldicott.records.schema import SNOMED

from bench.results import machine, peak_rss_mib, write_section
from devtools.demo_service import DEMO_SERVICE

ODS = DEMO_SERVICE["ods_code"]

PERIOD = Period.month(2026, 9)


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(np.arange(1, n + 1).astype(str), width)).astype(object)


def national_month(referrals: int, contacts: int, assessments: int, seed: int = 1, bad_share: float = 0.001
                   ) -> SourceMonth:
    """One month's source frames at any scale, generated directly (no database), with a few bad records."""
    rng = np.random.default_rng(seed)
    n_pat = min(800_000, max(10, int(referrals / 1.25)))
    pid = _ids("P", n_pat, 8)
    nhs = synthetic_numbers(rng, n_pat).astype(object)
    birth = np.datetime64("2008-09-01") - rng.integers(0, 60 * 365, n_pat).astype("timedelta64[D]")
    outward = np.array(["LS1", "LS6", "BD7", "HX1", "WF3", "S10", "M14", "YO31"])
    inward = (rng.integers(1, 10, n_pat).astype(str).astype(object)
              + rng.choice(list("ABDEFGHJLNPQRSTUWXYZ"), n_pat).astype(object)
              + rng.choice(list("ABDEFGHJLNPQRSTUWXYZ"), n_pat).astype(object))
    postcode = rng.choice(outward, n_pat).astype(object) + " " + inward
    patients = pd.DataFrame({
        "local_patient_id": pid, "nhs_number": nhs, "birth_date": birth, "postcode": postcode,
        "gender": rng.choice(np.array(["1", "2", "9"]), n_pat, p=[0.38, 0.61, 0.01]).astype(object),
        "ethnic_category": rng.choice(np.array(list("ABCDEFGHJKLMNPRSZ")), n_pat).astype(object),
        "gp_practice_code": np.char.add("Z8", np.char.zfill(rng.integers(0, 9000, n_pat).astype(str), 4))
        .astype(object),
        "dataset_objection_pre2020": None, "dataset_objection_date": None})
    n_bad = max(1, int(n_pat * bad_share))
    bad = rng.choice(n_pat, size=4 * n_bad, replace=False).reshape(4, n_bad)
    patients.loc[bad[0], "nhs_number"] = "9990000019"                       # check digit wrong
    patients.loc[bad[1], "postcode"] = "LS11AB"                             # no space
    patients.loc[bad[2], "birth_date"] = np.datetime64("2030-01-01")        # in the future
    patients.loc[bad[3], "nhs_number"] = patients.loc[bad[3][::-1], "nhs_number"].to_numpy()  # pairs share
    patients.loc[bad[3][n_bad // 2: n_bad - n_bad // 2], "nhs_number"] = None  # odd middle one: no number

    ref_pat = np.concatenate([np.arange(n_pat), rng.integers(0, n_pat, referrals - n_pat)])
    received = np.datetime64("2026-09-30") - rng.integers(0, 600, referrals).astype("timedelta64[D]")
    discharged = rng.random(referrals) < 0.12
    disch = np.where(discharged, np.datetime64("2026-09-01") + rng.integers(0, 30, referrals).astype("timedelta64[D]"),
                     np.datetime64("NaT"))
    disch = np.where(discharged & (disch < received), received, disch)
    rid = _ids("R", referrals, 9)
    refs = pd.DataFrame({
        "service_request_id": rid, "local_patient_id": pid[ref_pat], "commissioner_code": "ZC1",
        "received_date": received,
        "source_of_referral": rng.choice(np.array(["B1", "A1", "C1"]), referrals).astype(object),
        "discharge_date": disch, "end_code": np.where(discharged, rng.choice(np.array(["46", "47", "12"]), referrals),
                                                      None).astype(object),
        "presenting_problem_code": rng.choice(np.array(["F32", "F41.1", "F41.2", "F43.1"]), referrals).astype(object)})

    c_ref = rng.integers(0, referrals, contacts)
    start = np.maximum(received[c_ref], np.datetime64("2026-09-01")).astype("datetime64[m]")
    end = np.where(discharged[c_ref], disch[c_ref], np.datetime64("2026-09-30")).astype("datetime64[m]")
    span = np.maximum(1, (end - start).astype(np.int64) // (24 * 60) + 1)
    local = start + (rng.integers(0, 1 << 30, contacts) % span * 24 * 60).astype("timedelta64[m]") \
        + rng.choice(np.array([9 * 60, 11 * 60, 14 * 60, 17 * 60 + 30]), contacts).astype("timedelta64[m]")
    at = (pd.DatetimeIndex(local).tz_localize("Europe/London", ambiguous="NaT", nonexistent="shift_forward")
          .tz_convert("UTC").tz_localize(None))
    attend = rng.choice(np.array(["5", "6", "3", "2", "4"]), contacts, p=[0.82, 0.05, 0.08, 0.03, 0.02]).astype(object)
    cid = _ids("C", contacts, 10)
    contacts_df = pd.DataFrame({
        "care_contact_id": cid, "service_request_id": rid[c_ref], "contact_at": at,
        "duration_minutes": rng.choice(np.array([30, 45, 60]), contacts),
        "app_type": rng.choice(np.array(["01", "02", "03"]), contacts, p=[0.2, 0.7, 0.1]).astype(object),
        "attend_code": attend, "cons_mechanism": rng.choice(np.array(["01", "02", "04"]), contacts).astype(object),
        "clinician_id": np.char.add("CL", rng.integers(100, 999, contacts).astype(str)).astype(object),
        # the v2.1 contact fields a service records (IAPTLTCServiceInd is mandatory: blank rejects the contact)
        "planned": np.full(contacts, "Y", dtype=object), "ltc_service": np.full(contacts, "N", dtype=object),
        "therapy_mode": rng.choice(np.array(["1", "3"]), contacts, p=[0.9, 0.1]).astype(object),
        "activity_location": np.full(contacts, "A01", dtype=object),
        "treatment_language": np.full(contacts, "en", dtype=object)})

    a_contact = np.flatnonzero(np.isin(attend, ["5", "6"]))
    per = int(np.ceil(assessments / max(1, len(a_contact))))
    tools = [SNOMED["PHQ9"], SNOMED["GAD7"], SNOMED["WSAS_WORK"], SNOMED["WSAS_HOME"]][:max(2, per)]
    a_idx = np.repeat(a_contact, len(tools))[:assessments]
    tool = np.tile(np.array(tools, dtype=object), len(a_contact))[:assessments]
    hi = pd.Series(tool).map({SNOMED["PHQ9"]: 27, SNOMED["GAD7"]: 21}).fillna(8).to_numpy(int)
    score = rng.integers(0, hi + 1)
    score[rng.choice(len(score), size=n_bad, replace=False)] = 31
    assess = pd.DataFrame({
        "assessment_id": _ids("A", len(a_idx), 10), "service_request_id": rid[c_ref[a_idx]],
        "care_contact_id": cid[a_idx], "tool_code": tool, "score": score, "assessed_at": at[a_idx]})
    h_treat = pd.DataFrame({"service_request_id": rid, "first_treatment_at": pd.to_datetime(received)
                            + pd.to_timedelta(rng.integers(5, 90, referrals), unit="D"),
                            "treatment_contacts": rng.integers(0, 12, referrals)})
    disc_ids = rid[discharged]
    n_d = len(disc_ids)
    h_scores = pd.DataFrame({
        "service_request_id": np.repeat(disc_ids, 4),
        "tool_code": np.tile(np.array([SNOMED["PHQ9"], SNOMED["GAD7"]] * 2, dtype=object), n_d),
        "score": rng.integers(0, 22, 4 * n_d),
        "assessed_at": np.tile(np.array(["2026-01-01", "2026-01-01", "2026-09-01", "2026-09-01"],
                                        dtype="datetime64[s]"), n_d)})
    # v2.1's other tables, at a plausible share: one employment and accommodation status per patient, a disability
    # for one in ten; onward referrals for the discharged, pauses for one referral in twenty, long-term conditions
    # for one in five; one qualification per clinician
    recorded = np.full(n_pat, np.datetime64("2026-09-01"), dtype="datetime64[s]")
    employment = pd.DataFrame({"employment_id": _ids("E", n_pat, 8), "local_patient_id": pid,
                               "employment_status": rng.choice(np.array(["01", "02", "03"]), n_pat).astype(object),
                               "recorded_date": recorded})
    accommodation = pd.DataFrame({"accommodation_id": _ids("AC", n_pat, 8), "local_patient_id": pid,
                                  "accommodation_type": np.full(n_pat, "01", dtype=object),
                                  "settled": np.full(n_pat, "Y", dtype=object), "recorded_date": recorded})
    dis = rng.choice(n_pat, n_pat // 10, replace=False)
    disability = pd.DataFrame({"disability_id": _ids("D", len(dis), 8), "local_patient_id": pid[dis],
                               "disability_code": rng.choice(np.array(["04", "05", "06"]), len(dis)).astype(object)})
    gone = np.flatnonzero(discharged)
    onward = pd.DataFrame({"onward_referral_id": _ids("OR", len(gone), 9), "service_request_id": rid[gone],
                           "referred_at": pd.to_datetime(disch[gone]) + pd.Timedelta(hours=10),
                           "reason": np.full(len(gone), "01", dtype=object),
                           "receiving_org_code": np.full(len(gone), "RR8", dtype=object)})
    pz = rng.choice(referrals, referrals // 20, replace=False)
    pauses = pd.DataFrame({"pause_id": np.char.zfill(np.arange(1, len(pz) + 1).astype(str), 5).astype(object),
                           "service_request_id": rid[pz],                  # PauseID: an5 nationally
                           "start_date": np.maximum(received[pz], np.datetime64("2026-09-10")).astype("datetime64[s]"),
                           "end_date": np.full(len(pz), np.datetime64("2026-09-30"), dtype="datetime64[s]"),
                           "reason": np.full(len(pz), "01", dtype=object)})
    lt = rng.choice(referrals, referrals // 5, replace=False)
    conditions = pd.DataFrame({"condition_id": _ids("LT", len(lt), 9), "service_request_id": rid[lt],
                               "scheme": np.full(len(lt), "04", dtype=object),
                               "code": rng.choice(np.array(["44054006", "195967001"]), len(lt)).astype(object)})
    clin = np.char.add("CL", np.arange(100, 999).astype(str)).astype(object)
    qualifications = pd.DataFrame({"qualification_id": _ids("Q", len(clin), 5), "care_pers_local_id": clin,
                                   "level": rng.choice(np.array(["01", "02", "03"]), len(clin)).astype(object),
                                   "awarded_date": np.full(len(clin), np.datetime64("2015-06-01"),
                                                           dtype="datetime64[s]")})
    return SourceMonth(patients, refs, contacts_df, assess, history(refs["service_request_id"], h_treat, h_scores),
                       accommodation=accommodation, employment=employment, disability=disability, onward=onward,
                       pauses=pauses, conditions=conditions, qualifications=qualifications)


def run_pipeline(src: SourceMonth, out: Path, key: bytes, *, idb_csv: bool) -> dict:
    t0 = time.perf_counter()
    ds = build(src, PERIOD, org_provider=ODS)
    apply_pre2020(ds, src.patients, "referrals_before_cutover")
    t1 = time.perf_counter()
    res = rules.screen(ds)
    t2 = time.perf_counter()
    written = write(ds, out, key, with_idb=False)
    t3 = time.perf_counter()
    timing = {"build": t1 - t0, "validate": t2 - t1, "write": t3 - t2}
    idb_bytes = None
    if idb_csv:
        idb_bytes = write(ds, out, key, name="with_idb.zip.enc", with_idb=True).size
        timing["write_with_idb_csv"] = time.perf_counter() - t3
    return {"timing": timing, "counts": ds.counts(), "quarantined": len(res.quarantined),
            "by_reason": res.by_reason, "bytes": written.size, "idb_bytes": idb_bytes,
            "file_failures": res.file_failures}


def ratio(n_referrals: int, repeats: int = 3) -> dict:
    """Vectorised vs the row-by-row reference on one month, ``repeats`` interleaved rounds, medians.

    Each round runs the vectorised builder + every rule, the vectorised builder + only the reference's rules,
    and the reference, one after the other, so that all three see the same load on the shared cores.
    """
    from bench.reference_monthly_dataset import CODES, reference_build_validate

    src = national_month(n_referrals, int(n_referrals * 2.5), n_referrals * 5, seed=3)
    vec, same, ref = [], [], []              # (wall s, CPU s of this process) per round
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        ds = build(src, PERIOD, org_provider=ODS)
        res = rules.screen(ds)
        vec.append((time.perf_counter() - t0, time.process_time() - c0))
        t0, c0 = time.perf_counter(), time.process_time()
        like = build(src, PERIOD, org_provider=ODS)   # like with like: vectorised, only the reference's rules
        rules.screen(like, only=set(CODES))
        same.append((time.perf_counter() - t0, time.process_time() - c0))
        t0, c0 = time.perf_counter(), time.process_time()
        ref_tables, ref_q = reference_build_validate(src, PERIOD)
        ref.append((time.perf_counter() - t0, time.process_time() - c0))
    vec_q = {(q.record_type, q.record_id, q.reason_code) for q in res.quarantined}
    common = {c for _, _, c in ref_q}
    vec_common = {x for x in vec_q if x[2] in common}
    agree = vec_common == set(ref_q)
    counts_agree = {k: len(v) for k, v in ref_tables.items()} == {k: v for k, v in ds.counts().items()
                                                                  if k in ref_tables}
    def med(runs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(r[i] for r in runs)

    t_vec, t_same, t_ref = med(vec, 0), med(same, 0), med(ref, 0)
    c_vec, c_same, c_ref = med(vec, 1), med(same, 1), med(ref, 1)
    return {"referrals": n_referrals, "repeats": repeats, "vectorised_s": t_vec, "reference_s": t_ref,
            "ratio": t_ref / t_vec, "same_rules_s": t_same, "same_rules_ratio": t_ref / t_same, "codes": len(CODES),
            "cpu": {"vectorised_s": c_vec, "same_rules_s": c_same, "reference_s": c_ref, "ratio": c_ref / c_vec,
                    "same_rules_ratio": c_ref / c_same},
            "runs": {"vectorised": [r[0] for r in vec], "same_rules": [r[0] for r in same],
                     "reference": [r[0] for r in ref]},
            "quarantine_agrees": agree, "counts_agree": counts_agree, "reference_rules": len(common),
            "vectorised_rules": len(rules.REGISTRY)}


def read_source_timing(n_patients: int) -> dict:
    """``read_source`` over a SQLite records source seeded by the generator (the real read path)."""
    from caldicott.dataset.builder import read_source
    from caldicott.db import make_engine, sqlite_url
    from caldicott.records import synth

    with tempfile.TemporaryDirectory() as d:
        url = sqlite_url(Path(d) / "records.db")
        synth.write(synth.generate(n_patients, 7), make_engine(url))
        engine = make_engine(url, readonly=True)
        t0 = time.perf_counter()
        src = read_source(engine, PERIOD)
        return {**src.sizes(), "service_patients": n_patients, "read_s": time.perf_counter() - t0}


def in_memory_main() -> None:
    """The earlier headline: frames generated in memory, no read (``--in-memory``); writes no section by default."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--referrals", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=2_500_000)
    parser.add_argument("--assessments", type=int, default=5_000_000)
    parser.add_argument("--ratio-referrals", type=int, default=50_000)
    parser.add_argument("--ratio-repeats", type=int, default=3)
    parser.add_argument("--read-patients", type=int, default=100_000)
    parser.add_argument("--no-idb-csv", action="store_true")
    parser.add_argument("--no-write-results", action="store_true")
    args = parser.parse_args()
    key = load_key(new_key())
    t0 = time.perf_counter()
    src = national_month(args.referrals, args.contacts, args.assessments)
    gen = time.perf_counter() - t0
    sizes = src.sizes()
    with tempfile.TemporaryDirectory() as d:
        big = run_pipeline(src, Path(d), key, idb_csv=not args.no_idb_csv)
    del src
    gc.collect()
    peak = peak_rss_mib()
    rt = ratio(args.ratio_referrals, args.ratio_repeats)
    rd = read_source_timing(args.read_patients) if args.read_patients else None
    t = big["timing"]
    total = t["build"] + t["validate"] + t["write"]
    cmd = (f"python -m bench.monthly_dataset --referrals {args.referrals} --contacts {args.contacts} "
           f"--assessments {args.assessments} --ratio-referrals {args.ratio_referrals}"
           + (f" --ratio-repeats {args.ratio_repeats}" if args.ratio_repeats != 3 else ""))
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in t.items())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = f"""Command: `{cmd}` ({machine()}), {dt.date.today().isoformat()}; load average at the end {load}
(the 2 cores were shared with other work: wall-clock figures are upper bounds).

National-scale month (source frames generated directly: {sizes['patients']:,} patients, {sizes['referrals']:,}
referrals, {sizes['contacts']:,} care contacts, {sizes['assessments']:,} assessment rows; generation
{gen:.1f} s, not counted):

| stage | s |
|---|---|
{rows}
| **build + validate + write (Parquet archive, encrypted)** | **{total:.1f}** |

Peak RSS {peak:,.0f} MiB. {len(rules.REGISTRY)} rules evaluated; {big['quarantined']:,} records quarantined
({', '.join(f'{k} {v:,}' for k, v in big['by_reason'].items())});
file-level failures left: {big['file_failures'] or 'none'}.
Rows written: {', '.join(f'{k} {v:,}' for k, v in big['counts'].items())}; archive {big['bytes'] / 2**20:,.0f} MiB
""" + (f"(with the IDB CSVs: {big['idb_bytes'] / 2**20:,.0f} MiB).\n" if big["idb_bytes"] else ".\n")
    if rd:
        body += (f"\nReading the source (``read_source`` over SQLite, {rd['service_patients']:,}-patient synthetic "
                 f"service, one month: {rd['patients']:,} patients, {rd['referrals']:,} referrals, "
                 f"{rd['contacts']:,} contacts, {rd['assessments']:,} scores + aggregates): {rd['read_s']:.1f} s.\n")
    runs = "; ".join(f"{k} " + " / ".join(f"{x:.2f}" for x in v) for k, v in rt["runs"].items())
    cpu = rt["cpu"]
    body += f"""
Row-by-row reference (`bench/reference_monthly_dataset.py`: plain Python loops over dicts, builder + the
{rt['codes']} rules it implements) vs the vectorised builder + all {rt['vectorised_rules']} rules, on a
{rt['referrals']:,}-referral month, medians of {rt['repeats']} interleaved rounds: reference {rt['reference_s']:.1f} s,
vectorised {rt['vectorised_s']:.2f} s, **ratio {rt['ratio']:.0f}x**. Like with like (vectorised builder + the same
{rt['codes']} rules + cascade): {rt['same_rules_s']:.2f} s, **ratio {rt['same_rules_ratio']:.0f}x**. Each round, wall s:
{runs}. In CPU seconds of the process (less load-dependent: waiting for a core does not count, sharing one
still does): reference
{cpu['reference_s']:.1f}, vectorised {cpu['vectorised_s']:.2f}, **ratio {cpu['ratio']:.0f}x**; like with like
{cpu['same_rules_s']:.2f}, **ratio {cpu['same_rules_ratio']:.0f}x**. Same quarantine decisions for the shared rules:
{rt['quarantine_agrees']}; same table counts: {rt['counts_agree']}.
"""
    if not args.no_write_results:
        write_section("Monthly data set (in-memory frames)", body)
    print(body)


#: The PostgreSQL the bench uses when nothing else is named (trust auth on loopback, as on the project's machines).
LOCAL_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    import socket

    from sqlalchemy import make_url

    u = make_url(url)
    try:
        with socket.create_connection((u.host or "127.0.0.1", u.port or 5432), timeout=2):
            return True
    except OSError:
        return False


def main() -> None:
    """National month read from a records database file, every default step, 1/8..full scale (see
    :mod:`bench.monthly_dataset_db`), plus the ratio to the row-by-row reference; writes RESULTS.md's section."""
    import json
    import sys

    if "--in-memory" in sys.argv:
        sys.argv.remove("--in-memory")
        in_memory_main()
        return
    from bench import monthly_dataset_db as db

    parser = argparse.ArgumentParser()
    parser.add_argument("--referrals", type=int, default=1_000_000)
    parser.add_argument("--fractions", default="0.125,0.25,0.5,1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ratio-referrals", type=int, default=50_000)
    parser.add_argument("--ratio-repeats", type=int, default=3)
    parser.add_argument("--no-write-results", action="store_true")
    parser.add_argument("--postgres", default=LOCAL_POSTGRES,
                        help="admin URL of a PostgreSQL server for the full-scale run with the records there "
                             f"(default {LOCAL_POSTGRES}, when it answers; '' to skip)")
    args = parser.parse_args()
    cmd = " ".join(["python -m bench.monthly_dataset", *sys.argv[1:]])
    postgres = args.postgres if args.postgres and _answers(args.postgres) else ""
    if args.postgres and not postgres:
        print(f"PostgreSQL at {args.postgres} does not answer: its run is left out", flush=True)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "results.json"
        sys.argv = [sys.argv[0], "--referrals", str(args.referrals), "--fractions", args.fractions,
                    "--repeats", str(args.repeats), "--out", str(out), "--postgres", postgres]
        db.main()
        results = json.loads(out.read_text())
    rt = ratio(args.ratio_referrals, args.ratio_repeats) if args.ratio_referrals else None
    body = db.section(results, rt, cmd)
    if not args.no_write_results:
        write_section("Monthly data set", body)
    print(body)


if __name__ == "__main__":
    main()

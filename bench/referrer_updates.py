"""Benchmark: a large provider's day of referrer updates — 200 contracts, 20,000 sessions, over real SFTP.

``python -m bench.referrer_updates [--contracts 200] [--sessions 20000] [--repeat 3] [--format fhir-r4-v1]
[--no-write]``

A records source sized for it is generated directly as frames (one referral per patient, one session
each on the benchmark day, spread evenly over the contracts, half of them with clinical summaries) and
written with the synthetic generator's bulk writer. The SFTP server (``devtools/peers/sftp.py``) runs
in a process of its own on loopback, so the figures are the client's: what an Airflow worker would do.

Stages timed, each from a fresh state database and an empty SFTP root:

* ``plan``: read the day's sessions once, screen them, quarantine the bad ones;
* ``build``: build all contracts' session files (no sending), csv-v1 or, with ``--format``, fhir-r4-v1;
* ``build + deliver``: what the DAG's mapped tasks do, one after another in one process: per contract,
  read its sessions, build, record ledger intents, connect (SSH handshake, pinned host key), upload
  ``.part``, re-read and verify, rename; one connection per contract, as one task per contract has;
* ``re-run``: the same again, everything already delivered (ledger skip).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from caldicott.db import make_engine, sqlite_url
from caldicott.records import synth
from caldicott.records.nhs_numbers import synthetic_numbers
from caldicott.state.migrate import migrate
from caldicott.transport.sftp import SftpSender, paramiko_connector
from caldicott.updates import build, deliver

from bench.results import machine, peak_rss_mib, write_section
from devtools.airflow_env import DEMO_FHIR_NAMESPACE

DAY = dt.date(2026, 10, 14)


def make_source(path: Path, contracts: int, sessions: int, seed: int = 3, file_format: str = "csv-v1") -> None:
    rng = np.random.default_rng(seed)
    orgs = np.array([f"ZB{i:03d}" for i in range(contracts)])
    n = sessions
    ids = np.char.add("B", np.char.zfill(np.arange(1, n + 1).astype(str), 7))
    refs = np.char.add("RB", np.char.zfill(np.arange(1, n + 1).astype(str), 8))
    referrer = orgs[np.arange(n) % contracts]
    received = (np.datetime64(DAY) - rng.integers(20, 200, n).astype("timedelta64[D]")).astype("datetime64[D]")
    minutes = rng.integers(8 * 60, 19 * 60, n).astype("timedelta64[m]")
    local = np.datetime64(DAY).astype("datetime64[m]") + minutes
    contact_at = pd.DatetimeIndex(local).tz_localize("Europe/London").tz_convert("UTC").tz_localize(None)
    empty = lambda name: pd.DataFrame(columns=[c.name for c in synth.schema.metadata.tables[name].columns])  # noqa: E731
    frames = {
        "gp_practice": empty("gp_practice"),
        "organisation": pd.DataFrame({"ods_code": orgs, "name": [f"Bench Provider {o}" for o in orgs],
                                      "kind": "provider"}),
        "patient": pd.DataFrame({"local_patient_id": ids, "nhs_number": synthetic_numbers(rng, n)[:n],
                                 "given_name": "Bench", "family_name": "Patient", "copy_channel": "email",
                                 "gp_sharing_consent": True}),
        "referral": pd.DataFrame({"service_request_id": refs, "local_patient_id": ids, "referrer_org_code": referrer,
                                  "source_of_referral": "C1", "received_date": received}),
        "care_contact": pd.DataFrame({
            "care_contact_id": np.char.add("CB", np.char.zfill(np.arange(1, n + 1).astype(str), 8)),
            "service_request_id": refs, "contact_at": contact_at, "duration_minutes": 45, "app_type": "02",
            "attend_code": rng.choice(np.array(["5", "6", "3", "2", "4"]), n, p=[0.82, 0.05, 0.08, 0.03, 0.02]),
            "cons_mechanism": "02", "clinical_summary": rng.choice(np.array(synth.SUMMARIES), n)}),
        "coded_assessment": empty("coded_assessment"),
        "contract": pd.DataFrame({
            "contract_id": [f"CB{i:03d}" for i in range(contracts)], "referrer_org_code": orgs,
            "name": [f"Bench contract {i}" for i in range(contracts)], "active": True, "transport": "sftp",
            "connection_id": "bench", "remote_path": [f"/inbound/{o.lower()}" for o in orgs],
            "file_format": file_format, "include_summaries": [i % 2 == 0 for i in range(contracts)],
            "include_activity": True}),
    }
    synth.write(synth.SynthResult(frames=frames), make_engine(sqlite_url(path)))


class Server:
    """The SFTP peer in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "devtools.peers.sftp", str(workdir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parent.parent)
        self.conn = json.loads(self.proc.stdout.readline())
        self.root = Path(self.conn["root"])

    def connector(self):
        c = self.conn
        return paramiko_connector("127.0.0.1", c["port"], c["login"], host_key=c["extra"]["host_key"],
                                  password=c["password"])

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_once(records, workdir: Path, server: Server, suffix: str) -> dict:
    state = make_engine(sqlite_url(workdir / f"state-{time.time_ns()}.db"))
    migrate(state)
    contracts = build.active_contracts(records)
    rows = [r for r in contracts.to_dict("records")]
    orgs = build.known_organisations(records)
    end = DAY + dt.timedelta(days=1)
    key = DAY.isoformat()

    t0 = time.perf_counter()
    planned = deliver.plan_interval(records, state, DAY, end, key)
    t1 = time.perf_counter()
    size = 0
    for c in rows:
        items, *_ = deliver.build_items(records, state, c, DAY, end, key, known_orgs=orgs)
        size += sum(len(i.payload) for i in items)
    t2 = time.perf_counter()

    def factory(options, contract):
        return SftpSender(server.connector(), peer=options.contract_id, create_dirs=True)

    results = [deliver.deliver_contract(records, state, c["contract_id"], DAY, end, key, factory, contract=c,
                                        known_orgs=orgs) for c in rows]
    t3 = time.perf_counter()
    again = [deliver.deliver_contract(records, state, c["contract_id"], DAY, end, key, factory, contract=c,
                                      known_orgs=orgs) for c in rows]
    t4 = time.perf_counter()
    sent = sum(1 for r in results if r.files.get("sessions") == "sent")
    skipped = sum(1 for r in again if r.files.get("sessions") == "already_sent")
    files = list(server.root.rglob(f"*{suffix}"))
    assert sent == len(rows) == skipped == len(files), (sent, skipped, len(files))
    assert not list(server.root.rglob("*.part"))
    return {"plan": t1 - t0, "build": t2 - t1, "deliver": t3 - t2, "rerun": t4 - t3, "files": len(files),
            "rows": sum(r.rows["sessions"] for r in results), "bytes": size, "quarantined": planned["quarantined"],
            "sessions_read": planned["sessions"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contracts", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", default="csv-v1", choices=["csv-v1", "fhir-r4-v1"],
                        help="every contract's session file format (own section in RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave bench/RESULTS.md alone")
    args = parser.parse_args()
    # the service's FHIR namespace is configuration with no default (fhir-r4-v1 files are held without one): the
    # bench is a local run, so it takes the demo's unless the caller set one
    os.environ.setdefault("CALDICOTT_FHIR_NAMESPACE", DEMO_FHIR_NAMESPACE)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t0 = time.perf_counter()
        make_source(root / "records.db", args.contracts, args.sessions, file_format=args.format)
        seed_s = time.perf_counter() - t0
        records = make_engine(sqlite_url(root / "records.db"), readonly=True)
        runs = []
        for i in range(args.repeat):
            server = Server(root / f"peer-{i}")
            try:
                runs.append(run_once(records, root, server, ".json" if args.format.startswith("fhir") else ".csv"))
            finally:
                server.stop()
    med = {k: statistics.median(r[k] for r in runs) for k in ("plan", "build", "deliver", "rerun")}
    last = runs[-1]
    per_contract_ms = 1000 * med["deliver"] / args.contracts
    cmd = (f"python -m bench.referrer_updates --contracts {args.contracts} --sessions {args.sessions} "
           f"--repeat {args.repeat}" + (f" --format {args.format}" if args.format != "csv-v1" else ""))
    deliver_row = ("**build + deliver all files** (per contract: read, build, ledger intents, SSH connect with "
                   "pinned key, upload `.part`, re-read + sha256, rename)")
    body = "\n".join([
        f"Command: `{cmd}` ({machine()}; the SFTP server is asyncssh in a separate process on loopback; "
        f"load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: the cores were shared).",
        "",
        f"A large provider's day: {args.contracts} contracts (all SFTP, half with clinical summaries), "
        f"{last['sessions_read']:,} sessions on {DAY}; {last['files']} files, {last['rows']:,} data rows, "
        f"{last['bytes'] / 1e6:.1f} MB of {args.format}. Medians of {args.repeat} runs.",
        "",
        "| stage | median s |",
        "|---|---|",
        f"| plan: read the day once, screen, quarantine | {med['plan']:.2f} |",
        f"| build all {args.contracts} files (no sending) | {med['build']:.2f} |",
        f"| {deliver_row} | **{med['deliver']:.1f}** ({per_contract_ms:.0f} ms per contract) |",
        f"| re-run of the same day (all already delivered: ledger skip, no upload) | {med['rerun']:.1f} |",
        "",
        f"Peak RSS of the client process (Python, pandas, paramiko, both engines): {peak_rss_mib():,.0f} MiB.",
        f"Source generated and written in {seed_s:.1f} s (not included above). In Airflow each contract is its "
        "own mapped task, so wall time there is set by worker slots (`parallelism`) and task start-up, "
        "not by this loop.",
    ])
    if not args.no_write:
        write_section("Referrer updates" + (f" ({args.format})" if args.format != "csv-v1" else ""), body)
    print(body)


if __name__ == "__main__":
    main()

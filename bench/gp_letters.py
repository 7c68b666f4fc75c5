"""Benchmark: the ``gp_letters`` DAG's default path, end to end from the records source, per channel (issues 3, 13).

``python -m bench.gp_letters [--letters 10000] [--repeat 2] [--channels smime-email secure-email mesh post]``

What is timed is every step the DAG runs by default, starting from the real source (a synthetic SQLite records
database, as the demo's): ``plan_letters`` (:func:`caldicott.letters.flow.plan`: which letters are due, the policy,
quarantine, ledger intents, batches) and then, batch after batch, the whole ``send_batch`` task body
(:func:`caldicott_airflow.letters.send_planned_batch`, which the DAG's task calls: the Variable
``caldicott_service``, the channel's sender from its Airflow connection, the ledger skip, re-reading the batch's
letters from the source, render, protect, release gateway with its ledger claims and ``sent`` marks, the real peer).
Senders come from the same Airflow connections the demo sets (``AIRFLOW_CONN_*`` in the child's environment): SMTP
to aiosmtpd on loopback, MESH to mesh-sandbox over mutual TLS (``connections`` 4), post to the print house's SFTP
server (asyncssh; pinned host key, ``.part`` + checksum + rename) — the DAG's default post route.

The source is built once per run: ``synth.generate`` with enough patients for about ``--letters`` letters per
channel over 2025-01-01..2026-11-01, then two copies whose *routing* columns are set so every letter takes the
channels under test (the content, the record faults and the quarantine stay as generated): in the ``email`` copy
every practice is ``smime-email`` (with a certificate) and every patient copy goes by ``[secure]`` e-mail; in the
``mesh-post`` copy every practice is on MESH and every patient copy goes by post. Each round runs one child
process per copy, in turn (interleaved rounds); a child plans the whole interval then sends every batch of its two
channels, as one DAG run with ``{"start": ..., "end": ...}`` would. A channel's time is its batches' time plus its
share of the planning (the plan's time split by the number of sends it planned per channel).

Not timed: the process start and imports, the state database's migration (once per process, as a task's first use),
and, for MESH, the bench playing the GP practice collecting its letters after each batch (mesh-sandbox counts the
recipient's whole inbox on every send, an artefact of a mailbox nobody empties; ``--keep-inbox`` leaves it).

CPU: the child's own CPU plus its render worker's (:mod:`caldicott.letters.render_pool`), per channel; the peers'
CPU (the SMTP and SFTP servers in this process, mesh-sandbox in its own) is not in it but shares the machine. The
machine's 2 cores are often shared with other jobs: letters per CPU-second is the less load-dependent figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import machine, peak_rss_mib, write_section

CHANNELS = ("smime-email", "secure-email", "mesh", "post")
#: each child sends two channels: a GP channel and a patient-copy channel, routed so in its copy of the source
PAIRS = {"email": ("smime-email", "secure-email"), "mesh-post": ("mesh", "post")}
START, END = dt.date(2025, 1, 1), dt.date(2026, 11, 1)
LETTERS_PER_PATIENT = 1488 / 1481   # measured on this interval: letters a channel sends per patient generated


# ---- the source ------------------------------------------------------------------------------------------------

def make_source(root: Path, letters: int) -> dict:
    """The synthetic source (generated once per run) and its two routed copies; returns their paths."""
    from caldicott.db import make_engine, sqlite_url
    from caldicott.records import synth

    patients = max(200, round(letters / LETTERS_PER_PATIENT))
    result = synth.generate(patients, 7, keys_dir=root / "peer-keys")
    base = root / "records.db"
    synth.write(result, make_engine(sqlite_url(base)))
    out = {"patients": patients}
    for name in PAIRS:
        path = root / f"records-{name}.db"
        shutil.copyfile(base, path)
        _route(path, name)
        out[name] = str(path)
    return out


def _route(path: Path, pair: str) -> None:
    """Set the routing columns of a copy of the source so its letters take ``pair``'s channels (bench only:
    the rows' content, their faults and what the policy quarantines are left as generated)."""
    with sqlite3.connect(path) as db:
        if pair == "email":
            cert = db.execute("SELECT certificate_pem FROM gp_practice WHERE certificate_pem IS NOT NULL "
                              "ORDER BY ods_code LIMIT 1").fetchone()[0]
            db.execute("UPDATE gp_practice SET channel = 'smime-email', "
                       "certificate_pem = COALESCE(certificate_pem, ?)", (cert,))
            db.execute("UPDATE patient SET copy_channel = 'email', "
                       "email = COALESCE(email, 'patient' || local_patient_id || '@patients.example')")
        else:
            db.execute("UPDATE gp_practice SET channel = 'mesh', mesh_mailbox = 'X26ABC2'")
            db.execute("UPDATE patient SET copy_channel = 'post'")
        db.execute("UPDATE patient SET gp_sharing_consent = 1")   # every letter has a GP copy to send


# ---- the measured child ----------------------------------------------------------------------------------------

def _children_cpu() -> float:
    """CPU seconds of this process's child processes: reaped ones (``os.times``) and the live render workers."""
    try:
        from caldicott.letters.render_pool import worker_pids
    except ImportError:   # a tree from before the render pool (comparing against it)
        def worker_pids() -> list[int]:
            return []
    t = os.times()
    total = t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    for pid in worker_pids():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _pid_cpu(pid: int | None) -> float:
    """CPU seconds of process ``pid`` and its reaped children (0 when it is gone or unknown)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _clock() -> tuple[float, float, float]:
    """(wall, own CPU, children's CPU) now."""
    return time.perf_counter(), time.process_time(), _children_cpu()


def child(pair: str, wanted: list[str], settings: dict) -> dict:
    from caldicott.db import make_engine
    from caldicott.letters import flow
    from caldicott.letters.build import find_events, load_letters  # noqa: F401  (imports, outside the timing)
    from caldicott.state.migrate import migrate
    from caldicott_airflow.connections import records_engine, state_engine, state_url
    from caldicott_airflow.letters import send_planned_batch

    migrate(make_engine(state_url()))   # a deployment step (the DAG's tasks only verify): not timed
    state = state_engine()
    records = records_engine()
    profiler = None
    if settings.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    run_key = f"bench-{settings['round']}"
    t0 = _clock()
    planned = flow.plan(records, state, START, END, run_key)
    t1 = _clock()
    plan = {"seconds": t1[0] - t0[0], "cpu": t1[1] - t0[1], "child_cpu": t1[2] - t0[2]}
    per: dict[str, dict] = {c: {"seconds": 0.0, "cpu": 0.0, "child_cpu": 0.0, "sent": 0, "batches": 0,
                                "failed": 0, "planned": 0} for c in PAIRS[pair]}
    for batch in planned["batches"]:
        if batch["channel"] in per:
            per[batch["channel"]]["planned"] += len(batch["letters"])
    for batch in planned["batches"]:
        channel = batch["channel"]
        if channel not in wanted or channel not in per:
            continue
        a = _clock()
        result = send_planned_batch(batch, START, END)
        b = _clock()
        row = per[channel]
        row["seconds"] += b[0] - a[0]
        row["cpu"] += b[1] - a[1]
        row["child_cpu"] += b[2] - a[2]
        row["sent"] += result["sent"]
        row["failed"] += result["failed"]
        row["batches"] += 1
        if channel == "mesh" and settings.get("drain_mesh"):   # not timed: the GP practice collects its letters
            row["delivered"] = row.get("delivered", 0) + _drain_gp_inbox(settings["mesh_gp"])
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{settings['profile']}.{pair}")
    sends = sum(r["planned"] for r in per.values()) or 1
    out = {"pair": pair, "letters_planned": planned["letters"], "plan": plan, "channels": {}}
    for channel, row in per.items():
        if channel not in wanted:
            continue
        share = row["planned"] / sends     # this channel's part of the planning
        seconds = row["seconds"] + share * plan["seconds"]
        cpu = row["cpu"] + row["child_cpu"] + share * (plan["cpu"] + plan["child_cpu"])
        out["channels"][channel] = {
            **row, "plan_share_seconds": share * plan["seconds"], "total_seconds": seconds, "total_cpu": cpu,
            "rate": row["sent"] / seconds if seconds else 0.0,
            "letters_per_cpu_second": row["sent"] / cpu if cpu else 0.0,
            "cpu_ms_per_letter": 1000 * cpu / row["sent"] if row["sent"] else 0.0,
            "render_worker_cpu_ms_per_letter": 1000 * row["child_cpu"] / row["sent"] if row["sent"] else 0.0,
            "peak_rss_mib": peak_rss_mib()}
    return out


def _drain_gp_inbox(settings: dict) -> int:
    """Count the GP mailbox's messages, then empty it (the sandbox's admin reset), as a practice's system
    collects its letters. Why: mesh-sandbox counts the recipient's whole inbox on every send (``get_mailbox``
    → ``inbox_count``), so its cost per send grows with the inbox (about 3 ms of its CPU at 1,000 messages,
    13 ms at 10,000 here) and a 10,000-letter run would measure that, not the sender. Called between
    batches, when no send is in flight, so nothing is missed between the count and the reset."""
    from caldicott.transport.mesh import MeshSettings, make_client

    s = MeshSettings(**settings)
    with make_client(s) as gp:
        count = sum(1 for _ in gp.iterate_message_ids())
        resp = gp._session.delete(f"{s.url}/messageexchange/admin/reset/{s.mailbox}", timeout=60)
        resp.raise_for_status()
    return count


# ---- the parent: peers, rounds, the table ----------------------------------------------------------------------

TARGET = 300
MIN_LETTERS_NOTE = "64"
#: prose kept with the table whenever the bench rewrites its section (edit here, not in RESULTS.md)
NOTES = """**Before and after (issue 13)**, this bench on the code before the change and after it (6 Dec 2026; 1,500
letters a channel; medians of 2 interleaved rounds each; load average 3 to 7, so every figure is inflated and noisy):

| channel | CPU ms a letter, before → after (of it: render worker) | letters/s wall, before → after |
|---|---|---|
| smime-email | 5.29 → 5.34 (2.59) | 89 → 131 |
| secure-email | 4.54 → 4.58 (2.24) | 111 → 170 |
| mesh | 7.09 → 7.00 (2.58) | 90 → 91 |
| post (SFTP) | 7.93 → 7.48 (2.43) | 62 → 87 |

Render worker on or off (`--render-processes 1` / `0`, 3,000 letters a channel, one round each, load 1.7 to 2.6):
218 / 309 / 150 / 110 against 162 / 153 / 134 / 103 letters/s (smime-email / secure-email / MESH / post); CPU
5.05 / 3.75 / 7.23 / 8.67 against 5.13 / 5.21 / 6.80 / 7.95 ms a letter.

Where a letter's time goes (cProfile and py-spy over the children): rendering about 1.7 ms (fpdf2's object
serialisation a third of it, then placing the text, wrapping, the markup); the source reads 0.5 to 1 ms (planning
and the batch's content); S/MIME 0.3 ms; MESH: `mesh_client`/`requests` over TLS on the sending threads and the
GP Connect bundle (0.4 ms); SFTP: paramiko, about 2.4 ms of the sending process's CPU for a dozen round trips
(`.part`, checksum read back, rename) plus the server's; SMTP: mostly waiting for the server's four replies.

What changed: the PDFs are rendered in a second process, 8 letters a message and up to 64 ahead, in order, while the
sending process protects and releases the letters before them (`caldicott.letters.render_pool`; the ledger and the
sends stay in the gateway, so a killed render worker or sending process sends nothing twice:
`tests/reliability/test_crash_render_worker.py`); the template markup is tokenised directly instead of through
`html.parser`, and text is placed without fpdf2's per-call wrappers (the same PDF bytes; 1.66 instead of 2.22 ms a
letter, interleaved A/B); a batch re-reads only its own referrals' events instead of the whole interval's; letter
content is built from column lists instead of `DataFrame.to_dict` and a `.loc` per letter (same content, compared
letter by letter); the GP Connect bundle's empty-field walk skips scalars; post uploads on 2 SFTP connections and
no longer asks about a batch folder it has seen. The CPU saved in rendering and reading is about what the second
process costs in messages and start-up (spawn and imports, about 1 s of CPU, in the first batch's time): the gain
is in wall time, when a core is free. Then the transports (same day, later): `Ledger.mark_sent`'s statement
built once (0.22 -> 0.05 ms a mark; still one committed mark a letter: batching marks would resend a batch after a
crash, since an SMTP server cannot be asked what arrived); the batch's letters read from the source in steps while
the first ones render and send; the SFTP upload read back through its own handle (13 -> 10 requests a file) and
SSH compression off (PDFs are compressed already); the MESH journal's two writes a letter at under half the CPU (an
upsert, statements built once, no SQLite busy sleeps). MESH and post are still the slowest channels: MESH's client
over TLS and the journal; post's encryption, the gateway's claims and its source reads share the sending process.

The figures before issue 13 (6 Dec: 332 / 355 / 391 / 520 letters/s) timed render → peer only, post to the staging
folder, without the source reads: not comparable with these."""
HEADER = ("| channel | letters sent (rounds) | letters/s wall, median (each round) | CPU ms a letter (of it: render "
          "worker) | letters per CPU-s | plan share s | batches | peak RSS MiB |\n|---|---|---|---|---|---|---|---|")


def _delivered(channel: str, smtp, printer) -> int | None:
    if channel == "post":
        return len(printer.files())
    if channel in ("smime-email", "secure-email"):
        return len(smtp.files())
    return None


def _env(peers: list, records: str, state: str, render_processes: int | None = None) -> dict[str, str]:
    from devtools.demo_service import DEMO_SERVICE

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    for peer in peers:
        env.update(peer.airflow_env())
    env["AIRFLOW_CONN_CALDICOTT_RECORDS"] = json.dumps({"conn_type": "sqlite", "host": records})
    env["AIRFLOW_CONN_CALDICOTT_STATE"] = json.dumps({"conn_type": "sqlite", "host": state})
    env["AIRFLOW_VAR_CALDICOTT_SERVICE"] = json.dumps(DEMO_SERVICE)
    if render_processes is not None:
        env["CALDICOTT_RENDER_PROCESSES"] = str(render_processes)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(Path(__file__).resolve().parents[1]),
                                                    str(Path(__file__).resolve().parents[1] / "plugins")) if p)
    return env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--letters", type=int, default=10_000, help="about this many letters per channel and round")
    parser.add_argument("--channels", nargs="*", default=list(CHANNELS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds (the two children interleaved); medians")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--keep-inbox", action="store_true",
                        help="do not empty the GP MESH mailbox after each batch (see _drain_gp_inbox)")
    parser.add_argument("--render-processes", type=int,
                        help="CALDICOTT_RENDER_PROCESSES for the children (default: the module's, 1; 0 renders "
                             "inline): the same setting the DAG's workers read")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--profile", help="write each child's cProfile stats to PROFILE.<pair> (implies --no-write)")
    parser.add_argument("--py-spy", help="sample each child and its render worker with py-spy (collapsed stacks, "
                                         "per thread) into PY_SPY.<pair>.txt (implies --no-write)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.channels, json.loads(args.settings))))
        return
    from devtools.peers.mesh import MeshPeer
    from devtools.peers.print_house import PrintHouse
    from devtools.peers.smtp import SmtpPeer

    runs: dict[str, list[dict]] = {c: [] for c in args.channels}
    plans: list[dict] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as d, SmtpPeer(Path(d) / "smtp") as smtp, MeshPeer(Path(d) / "mesh") as mesh:
        printer = PrintHouse(Path(d) / "print", sftp=True)
        try:
            t = time.perf_counter()
            source = make_source(Path(d) / "source", args.letters)
            print(f"source: {source['patients']} patients in {time.perf_counter() - t:.0f} s", flush=True)
            settings = {"profile": args.profile, "drain_mesh": not args.keep_inbox,
                        "mesh_gp": dataclasses.asdict(mesh.settings(mesh.GP_MAILBOX))}
            for rnd in range(args.repeat):
                for pair, channels in PAIRS.items():
                    wanted = [c for c in channels if c in args.channels]
                    if not wanted:
                        continue
                    state = str(Path(d) / f"state-{pair}-{rnd}.db")
                    before = {c: _delivered(c, smtp, printer) for c in wanted}
                    loads.append(os.getloadavg()[0])
                    mesh_pid = mesh.proc.pid if mesh.proc is not None else None
                    peers_before = (time.process_time(), _pid_cpu(mesh_pid))
                    cmd = [sys.executable, "-m", "bench.gp_letters", "--child", pair, "--channels", *wanted,
                           "--settings", json.dumps({**settings, "round": rnd})]
                    if args.py_spy:
                        spy = os.environ.get("PY_SPY") or str(Path(sys.executable).with_name("py-spy"))
                        cmd = [spy, "record", "--subprocesses", "--threads",
                               "--format", "raw", "--rate", "200", "-o", f"{args.py_spy}.{pair}.txt", "--", *cmd]
                    out = subprocess.run(
                        cmd,
                        capture_output=True, text=True, env=_env([smtp, mesh, printer], source[pair], state,
                                                                 args.render_processes))
                    loads.append(os.getloadavg()[0])
                    # the peers' CPU over the child's run (its start-up too): SMTP and SFTP servers in this process,
                    # mesh-sandbox in its own (with the untimed inbox emptying); not in the child's figures
                    peers_cpu = {"here": time.process_time() - peers_before[0],
                                 "mesh": _pid_cpu(mesh_pid) - peers_before[1]}
                    if out.returncode:
                        sys.stderr.write(out.stderr[-4000:])
                        raise SystemExit(f"child {pair} failed ({out.returncode})")
                    result = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
                    plans.append({"pair": pair, **result["plan"], "letters": result["letters_planned"]})
                    local = [c for c in result["channels"] if c != "mesh"]   # served by this process
                    local_sent = sum(result["channels"][c]["sent"] for c in local) or 1
                    for channel, row in result["channels"].items():
                        peer = peers_cpu["mesh"] if channel == "mesh" else peers_cpu["here"] * row["sent"] / local_sent
                        row["peer_cpu_ms_per_letter"] = 1000 * peer / row["sent"] if row["sent"] else 0.0
                        got = _delivered(channel, smtp, printer)
                        row.setdefault("delivered", None if got is None else got - before[channel])
                        runs[channel].append(row)
                        print(channel, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()},
                              flush=True)
        finally:
            printer.stop()

    def med(rs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    lines = []
    for channel, rs in runs.items():
        if not rs:
            continue
        each = ", ".join(f"{r['rate']:.0f}" for r in rs)
        sent = ", ".join(f"{r['sent']:,}" + (f" ({r['failed']} failed)" if r["failed"] else "") for r in rs)
        lines.append(f"| {channel} | {sent} | **{med(rs, 'rate'):.0f}** ({each}) | {med(rs, 'cpu_ms_per_letter'):.2f} "
                     f"({med(rs, 'render_worker_cpu_ms_per_letter'):.2f}) | {med(rs, 'letters_per_cpu_second'):.0f} | "
                     f"{med(rs, 'plan_share_seconds'):.1f} | {rs[0]['batches']} | "
                     f"{max(r['peak_rss_mib'] for r in rs):.0f} |")
    plan_ms = statistics.median(1000 * p["seconds"] / max(1, p["letters"]) for p in plans) if plans else 0.0
    load = os.getloadavg()
    command = f"python -m bench.gp_letters --letters {args.letters} --repeat {args.repeat}" + (
        f" --render-processes {args.render_processes}" if args.render_processes is not None else "")
    below = [c for c, rs in runs.items() if rs and med(rs, "rate") < TARGET]
    verdict = (f"**Below {TARGET} letters/s in this run: {', '.join(below)}.**" if below else
               f"Every channel is at or above {TARGET} letters/s in this run.")
    body = f"""Command: `{command}` ({machine()}; 1-minute load average {min(loads):.1f} to {max(loads):.1f}
while the children ran, {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end: with a load above 2 the cores were
shared with other jobs and the wall-clock rates are a floor; CPU per letter is the less load-dependent figure).
{args.repeat} round(s), the two children interleaved; medians over the rounds.

**What is timed: every step the DAG runs by default, from the real source.** One child process per pair of
channels plays a `gp_letters` run over 2025-01-01..2026-11-01 (conf `start`/`end`) on a synthetic SQLite records
source: `plan_letters` (`flow.plan`: events, letter content, policy, quarantine, ledger intents, batches), then
every batch of its two channels through the `send_batch` task's own body (`caldicott_airflow.letters.
send_planned_batch`: the Variable `caldicott_service`, the sender from its Airflow connection, the ledger skip,
re-reading the batch's letters from the source, rendering — in a worker process for batches of
{MIN_LETTERS_NOTE}+ letters, `caldicott.letters.render_pool` —, protection, the release gateway's policy checks,
claims and `sent` marks in the SQLite state database, and the real peer): S/MIME e-mail and `[secure]` e-mail to
aiosmtpd on loopback (one connection per batch, one message in flight); GP Connect Send Document to mesh-sandbox
over mutual TLS (4 connections); post encrypted to the print house and uploaded to its SFTP server (asyncssh;
pinned host key, `.part`, checksum read back, rename; 2 connections) — the DAG's default post route. The source's
routing columns are set per pair (every practice `smime-email` and every patient copy by e-mail; every practice
on MESH and every copy by post); content, record faults and quarantine are as generated. A channel's time is its
batches' plus its share of the planning (by sends planned). CPU is the child's plus its render worker's; the
peers (SMTP and SFTP servers in the parent process, mesh-sandbox in its own) share the same 2 cores but are not
counted. Not timed: process start-up and imports, the state database's migration (a deployment step), and, for
MESH, emptying the GP mailbox after each batch (mesh-sandbox counts the whole inbox on every send).

{HEADER}
{chr(10).join(lines)}

Planning: median {plan_ms:.2f} ms a letter planned. Target (issue 13): at least {TARGET} letters/s on every
channel, end to end, on these 2 cores. {verdict}

{NOTES}"""
    if not args.no_write and not args.profile and not args.py_spy:
        write_section("GP letters", body)
    print(body)


if __name__ == "__main__":
    main()

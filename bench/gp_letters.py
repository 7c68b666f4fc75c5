"""Benchmark: GP letters rendered, encrypted and handed to the local peers, per channel (issue 3).

``python -m bench.gp_letters [--letters 10000] [--repeat 3] [--channels smime-email mesh secure-email post]``

For each channel a child process takes N letters (real letters from a 2,000-patient synthetic source, built
once per run, cloned under fresh referral ids to reach N), records ledger intents, then releases them through
the real path: template → PDF → S/MIME / GP Connect bundle / encrypted post file → release gateway (policy
check, ledger ``sending`` → ``sent`` in SQLite, per chunk) → sender → peer (aiosmtpd on loopback, mesh-sandbox
over mutual TLS with ``--mesh-connections`` clients, the staging folder). Reports letters/s overall and the
median over 1,000-letter measuring chunks, letters per CPU-second of the child, and its peak RSS; with
``--repeat R`` the channels run R rounds in turn and the table shows medians. The figure is CPU-bound: note the
load average (the build machine's 2 cores are shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import machine, peak_rss_mib, write_section

CHANNELS = ("smime-email", "secure-email", "mesh", "post")
CHUNK_NOTE = "32 letters (`caldicott.gateway.CHUNK`)"


def make_source(root: Path) -> None:
    """The 2,000-patient synthetic source and its keys, built once per run (about 20 s) for every channel."""
    from caldicott.db import make_engine, sqlite_url
    from caldicott.records import synth

    result = synth.generate(2000, 7, keys_dir=root / "peer-keys")
    synth.write(result, make_engine(sqlite_url(root / "records.db")))


def _letters(root: Path):
    from caldicott.db import make_engine, sqlite_url
    from caldicott.letters.build import find_events, load_letters

    engine = make_engine(sqlite_url(root / "records.db"), readonly=True)
    base = [lt for lt in load_letters(engine, find_events(engine, dt.date(2025, 1, 1), dt.date(2026, 11, 1)))
            if not lt.problems]
    return base, root / "peer-keys"


def child(channel: str, n: int, chunk: int, peers: dict) -> dict:
    from caldicott.db import make_engine, sqlite_url
    from caldicott.gateway import release
    from caldicott.letters import flow, gp_connect
    from caldicott.state.migrate import migrate
    from caldicott.transport.ledger import Intent, Ledger
    from caldicott.transport.mesh import MeshSender
    from caldicott.transport.post import StagedPostSender
    from caldicott.transport.smtp import SmtpSender

    from devtools.demo_service import demo_service
    from devtools.peers.print_house import PrintHouse

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        base, keys = _letters(Path(peers["source"]))
        cert = (keys / "Z84000.crt").read_text()
        kind = "patient" if channel in ("secure-email", "post") else "gp"
        letters = []
        for i in range(n):
            src = base[i % len(base)]
            copy = {"secure-email": "email", "post": "post"}.get(channel, "email")
            patient = {**src.patient, "gp_sharing_consent": True, "copy_channel": copy, "gp_practice_code": "Z84000",
                       "email": src.patient.get("email") or "p@patients.example",
                       "address_line": src.patient.get("address_line") or "1 Mill Lane", "postcode": "LS1 1AA"}
            practice = {"ods_code": "Z84000", "name": "Synthetic Practice 1", "email": "gp@nhs.example",
                        "channel": "mesh" if channel == "mesh" else "smime-email", "mesh_mailbox": "X26ABC2",
                        "certificate_pem": cert}
            # distinct per round too: a round must not overwrite the files of the one before (post counts files)
            letters.append(dataclasses.replace(src, referral_id=f"{src.referral_id}-{peers.get('round', 0)}-{i}",
                                               patient=patient,
                                               practice=practice))
        state = make_engine(sqlite_url(root / "state.db"))
        migrate(state)
        batch = f"bench/{channel}"
        Ledger(state).record_intent(Intent(flow.letter_id(lt.referral_id, lt.event, kind), flow.FLOW, "x", "bench",
                                           "r", channel, batch) for lt in letters)
        printer = PrintHouse(Path(peers["print_root"]))
        if channel in ("smime-email", "secure-email"):
            client = smtplib.SMTP("127.0.0.1", peers["smtp_port"])
            sender = SmtpSender(client, "letters@nhs.example")
        elif channel == "mesh":
            from caldicott.transport.mesh import MeshSettings

            sender = MeshSender.connect(MeshSettings(**peers["mesh"]), gp_connect.WORKFLOW,
                                        connections=peers["mesh_connections"])
        else:
            sender = StagedPostSender(printer.staging)
        ch = flow.Channels({sender_key(channel): sender}, demo_service(), "letters@nhs.example", "X26ABC1",
                           printer.cert_path.read_text())
        rates = []
        profiler = None
        if peers.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        c0 = time.process_time()
        sent = 0
        paused, pause_cpu, drained = 0.0, 0.0, 0
        for start in range(0, n, chunk):
            part = letters[start:start + chunk]
            t = time.perf_counter()
            report = release(flow.outbound_items(part, kind, channel, batch, ch, set()), sender, state)
            rates.append(len(report.sent) / (time.perf_counter() - t))
            sent += len(report.sent)
            assert not report.failed and not report.refused, report.counts()
            if channel == "mesh" and peers.get("drain_mesh"):   # not timed: the GP practice collects its letters
                p, pc = time.perf_counter(), time.process_time()
                drained += _drain_gp_inbox(peers["mesh_gp"])
                paused, pause_cpu = paused + time.perf_counter() - p, pause_cpu + time.process_time() - pc
        total = time.perf_counter() - t0 - paused
        cpu = time.process_time() - c0 - pause_cpu
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{peers['profile']}.{channel}")
        if channel in ("smime-email", "secure-email"):
            client.quit()
        elif channel == "mesh":
            sender.close()
        extra = {"delivered": drained} if channel == "mesh" and peers.get("drain_mesh") else {}
        return {**extra, "channel": channel, "letters": n, "sent": sent, "seconds": total, "cpu_seconds": cpu,
                "letters_per_cpu_second": n / cpu,
                "rate": n / total, "median_chunk_rate": statistics.median(rates), "peak_rss_mib": peak_rss_mib(),
                "chunk_rates": [round(r) for r in rates]}


def _drain_gp_inbox(settings: dict) -> int:
    """Count the GP mailbox's messages, then empty it (the sandbox's admin reset), as a practice's system
    collects its letters. Why: mesh-sandbox counts the recipient's whole inbox on every send (``get_mailbox``
    → ``inbox_count``), so its cost per send grows with the inbox (about 3 ms of its CPU at 1,000 messages,
    13 ms at 10,000 here) and a 10,000-letter run would measure that, not the sender. Called between
    measuring chunks, when no send is in flight, so nothing is missed between the count and the reset."""
    from caldicott.transport.mesh import MeshSettings, make_client

    s = MeshSettings(**settings)
    with make_client(s) as gp:
        count = sum(1 for _ in gp.iterate_message_ids())
        resp = gp._session.delete(f"{s.url}/messageexchange/admin/reset/{s.mailbox}", timeout=60)
        resp.raise_for_status()
    return count


def sender_key(channel: str) -> str:
    from caldicott.letters.flow import SENDER_FOR

    return SENDER_FOR[channel]


# wall-clock letters/s before issue 3 (per-letter ledger transactions, one MESH connection, sends inline), from
# bench/RESULTS.md at commit 21381ed (quiet machine, load 1.1): the ratio column compares against these
BEFORE = {"smime-email": 117, "secure-email": 167, "mesh": 79, "post": 182}
DRAIN_NOTE = ("Every 1,000 MESH letters, outside the timed part, the bench plays the GP practice collecting its "
              "letters:\nit counts the GP mailbox and empties it, because mesh-sandbox counts the recipient's whole "
              "inbox on every\nsend (3 ms of its CPU per send at 1,000 messages, 13 ms at 10,000): an artefact of a "
              "mailbox nobody collects\nfrom. `--keep-inbox` measures without the collecting.")
HEADER = ("| channel | letters | delivered | letters/s wall, median (each round) | letters/s wall, median chunk | "
          "letters per CPU-s | peak RSS MiB | before (letters/s wall) | ratio |\n|---|---|---|---|---|---|---|---|---|")


def _delivered(channel: str, smtp, mesh, printer) -> int:
    if channel == "mesh":
        with mesh.client(mesh.GP_MAILBOX) as gp:
            return sum(1 for _ in gp.iterate_message_ids())
    if channel == "post":
        return len(printer.files())
    return len(smtp.files())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--letters", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1000, help="letters per measured chunk (and per release call)")
    parser.add_argument("--channels", nargs="*", default=list(CHANNELS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the channels (interleaved); medians")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    parser.add_argument("--mesh-connections", type=int, default=4, help="MESH connections sending in parallel")
    parser.add_argument("--keep-inbox", action="store_true",
                        help="do not empty the GP MESH mailbox between measuring chunks (see _drain_gp_inbox)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--profile", help="write each child's cProfile stats to PROFILE.<channel> (implies --no-write)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.letters, args.chunk, json.loads(args.peers))))
        return
    # the peers run outside the measured process (SMTP in a thread here, mesh-sandbox in its own process)
    from devtools.peers.mesh import MeshPeer
    from devtools.peers.print_house import PrintHouse
    from devtools.peers.smtp import SmtpPeer

    runs: dict[str, list[dict]] = {c: [] for c in args.channels}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as d, SmtpPeer(Path(d) / "smtp") as smtp, MeshPeer(Path(d) / "mesh") as mesh:
        printer = PrintHouse(Path(d) / "print")
        make_source(Path(d) / "source")
        peers = {"smtp_port": smtp.port, "print_root": str(printer.root), "source": str(Path(d) / "source"),
                 "profile": args.profile, "mesh_connections": args.mesh_connections,
                 "mesh": dataclasses.asdict(mesh.settings(mesh.SENDER_MAILBOX)),
                 "mesh_gp": dataclasses.asdict(mesh.settings(mesh.GP_MAILBOX)), "drain_mesh": not args.keep_inbox}
        for _round in range(args.repeat):
            for channel in args.channels:
                before = _delivered(channel, smtp, mesh, printer)
                loads.append(os.getloadavg()[0])
                out = subprocess.run([sys.executable, "-m", "bench.gp_letters", "--child", channel, "--letters",
                                      str(args.letters), "--chunk", str(args.chunk),
                                      "--peers", json.dumps({**peers, "round": _round})],
                                     capture_output=True, text=True, check=True)
                loads.append(os.getloadavg()[0])
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.setdefault("delivered", _delivered(channel, smtp, mesh, printer) - before)
                runs[channel].append(row)
                print(row, flush=True)

    def med(rs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    lines = []
    for channel, rs in runs.items():
        wall = med(rs, "rate")
        each = ", ".join(f"{r['rate']:.0f}" for r in rs)
        old = BEFORE.get(channel)
        lines.append(f"| {channel} | {args.letters:,} x {len(rs)} | {sum(r['delivered'] for r in rs):,} | "
                     f"**{wall:.0f}** ({each}) | {med(rs, 'median_chunk_rate'):.0f} | "
                     f"{med(rs, 'letters_per_cpu_second'):.0f} | {max(r['peak_rss_mib'] for r in rs):.0f} | "
                     f"{old or '-'} | {f'{wall / old:.1f}x' if old else '-'} |")
    load = os.getloadavg()
    command = f"python -m bench.gp_letters --letters {args.letters} --repeat {args.repeat}"
    body = f"""Command: `{command}` ({machine()}; 1-minute load average {min(loads):.1f} to {max(loads):.1f}
while the children ran, {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end: the 2 cores were shared with other
jobs, so wall-clock rates are a floor; letters per CPU-second of the sending process is the less load-dependent
figure). Channels run in turn, {args.repeat} round(s), figures are
medians over the rounds.

Each letter: Jinja2 template → PDF (fpdf2) → protection (S/MIME AES-256 to the practice certificate; GP Connect
FHIR bundle; `[secure]` gateway e-mail; DER envelope to the print house) → release gateway in chunks of
{CHUNK_NOTE} (policy check per letter; per chunk one ledger read and one claim transaction, `intended → sending`)
→ sends on worker threads while the next chunk renders → the local peer (aiosmtpd on loopback, one connection,
one message in flight, `sent` recorded after each 250; mesh-sandbox over mutual TLS, {args.mesh_connections}
connections, `sent` recorded once per chunk; the staging folder, one file in flight). The peers run outside the
measured process. {DRAIN_NOTE if not args.keep_inbox else "The GP MESH mailbox was left to fill (`--keep-inbox`)."}

{HEADER}
{chr(10).join(lines)}

Target: at least 150 letters/s per channel. "Before" is the run at commit 21381ed (per-letter ledger transactions,
one MESH connection, every send inline), on a quieter machine (load 1.1)."""
    if not args.no_write and not args.profile:
        write_section("GP letters", body)
    print(body)


if __name__ == "__main__":
    main()

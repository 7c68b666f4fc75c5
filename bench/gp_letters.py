"""Benchmark: GP letters rendered, encrypted and handed to the local peers, per channel (issue 3).

``python -m bench.gp_letters [--letters 10000] [--channels smime-email mesh secure-email post]``

For each channel a child process takes N letters (real letters from a 2,000-patient synthetic source,
cloned under fresh referral ids to reach N), records ledger intents, then releases them through the real
path: template → PDF → S/MIME / GP Connect bundle / encrypted post file → release gateway (policy check,
ledger ``sending`` → ``sent`` in SQLite) → sender → peer (aiosmtpd on loopback, mesh-sandbox over mutual
TLS, the staging folder). Reports letters/s overall and the median over 1,000-letter chunks, and the
child's peak RSS. Run it on a quiet machine: the figure is CPU-bound.
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
    from caldicott.letters.render import Service
    from caldicott.state.migrate import migrate
    from caldicott.transport.ledger import Intent, Ledger
    from caldicott.transport.mesh import MeshSender
    from caldicott.transport.post import StagedPostSender
    from caldicott.transport.smtp import SmtpSender

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
            letters.append(dataclasses.replace(src, referral_id=f"{src.referral_id}-{i}", patient=patient,
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
        ch = flow.Channels({sender_key(channel): sender}, Service(), "letters@nhs.example", "X26ABC1",
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
        for start in range(0, n, chunk):
            part = letters[start:start + chunk]
            t = time.perf_counter()
            report = release(flow.outbound_items(part, kind, channel, batch, ch, set()), sender, state)
            rates.append(len(report.sent) / (time.perf_counter() - t))
            sent += len(report.sent)
            assert not report.failed and not report.refused, report.counts()
        total = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{peers['profile']}.{channel}")
        if channel in ("smime-email", "secure-email"):
            client.quit()
        elif channel == "mesh":
            sender.close()
        return {"channel": channel, "letters": n, "sent": sent, "seconds": total, "cpu_seconds": cpu,
                "letters_per_cpu_second": n / cpu,
                "rate": n / total, "median_chunk_rate": statistics.median(rates), "peak_rss_mib": peak_rss_mib()}


def sender_key(channel: str) -> str:
    from caldicott.letters.flow import SENDER_FOR

    return SENDER_FOR[channel]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--letters", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--channels", nargs="*", default=list(CHANNELS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    parser.add_argument("--mesh-connections", type=int, default=4, help="MESH connections sending in parallel")
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

    rows = []
    with tempfile.TemporaryDirectory() as d, SmtpPeer(Path(d) / "smtp") as smtp, MeshPeer(Path(d) / "mesh") as mesh:
        printer = PrintHouse(Path(d) / "print")
        make_source(Path(d) / "source")
        peers = {"smtp_port": smtp.port, "print_root": str(printer.root), "source": str(Path(d) / "source"),
                 "profile": args.profile, "mesh_connections": args.mesh_connections,
                 "mesh": dataclasses.asdict(mesh.settings(mesh.SENDER_MAILBOX))}
        for channel in args.channels:
            before = (len(smtp.files()), len(printer.files()))
            out = subprocess.run([sys.executable, "-m", "bench.gp_letters", "--child", channel, "--letters",
                                  str(args.letters), "--chunk", str(args.chunk), "--peers", json.dumps(peers)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if channel == "mesh":
                gp = mesh.client(mesh.GP_MAILBOX)
                row["delivered"] = sum(1 for _ in gp.iterate_message_ids())
                gp.close()
            elif channel == "post":
                row["delivered"] = len(printer.files()) - before[1]
            else:
                row["delivered"] = len(smtp.files()) - before[0]
            rows.append(row)
            print(row, flush=True)
    lines = "\n".join(f"| {r['channel']} | {r['letters']:,} | {r['delivered']:,} | {r['rate']:.0f} | "
                      f"{r['median_chunk_rate']:.0f} | {r.get('letters_per_cpu_second', 0):.0f} | "
                      f"{r['peak_rss_mib']:.0f} |" for r in rows)
    load = os.getloadavg()
    body = f"""Command: `python -m bench.gp_letters --letters {args.letters}` ({machine()}; load average
{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end: the 2 cores were shared with other jobs, so wall-clock
rates are a floor; letters per CPU-second of the sending process is the load-independent figure).

Each letter: Jinja2 template → PDF (fpdf2) → protection (S/MIME AES-256 to the practice certificate; GP Connect
FHIR bundle; `[secure]` gateway e-mail; DER envelope to the print house) → release gateway with the SQLite
ledger (intent → sending → sent) → the local peer (aiosmtpd on loopback, mesh-sandbox over mutual TLS, staging
folder). The peers run outside the measured process.

| channel | letters | delivered | letters/s wall | letters/s wall, median chunk | letters per CPU-s | peak RSS MiB |
|---|---|---|---|---|---|---|
{lines}

Target: at least 150 letters/s per channel."""
    if not args.no_write and not args.profile:
        write_section("GP letters", body)
    print(body)


if __name__ == "__main__":
    main()

"""``make demo``: seed, start the stand-in peers and a real Airflow on loopback, run every DAG, summarise.

Each DAG runs through the real scheduler (LocalExecutor), triggered over the REST API like a person or
another system would; human steps are answered over the same API as a service manager would answer
them in the UI. Safe to re-run: the records are re-seeded only when asked for a new size or seed, and
every flow is idempotent, so a second run reports what the first already delivered.

It ends with a summary: one table per flow (what was planned, what went where, what was held back and why), the
paths of everything it wrote, and a scan of Airflow's metadata and task logs for patient data. ``--json`` prints
the same summary as one JSON document instead (``make demo DEMO_ARGS=--json``); either way it is also written to
``var/demo/demo-summary.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from caldicott.transport.ledger import DONE

from devtools import demos, peers
from devtools.airflow_env import free_port
from devtools.bootstrap import DEMO_PATIENTS, DEMO_SEED, Workspace, prepare, seed
from devtools.leakscan import scan
from devtools.paths import AIRFLOW_HOME, DEMO, ROOT
from devtools.stack import AirflowStack

log = logging.getLogger("devtools.demo")


@dataclass
class DemoContext:
    stack: AirflowStack
    workspace: Workspace
    peers: dict[str, object] = field(default_factory=dict)


def demo_modules(only: list[str] | None = None):
    mods = [importlib.import_module(f"{demos.__name__}.{m.name}") for m in pkgutil.iter_modules(demos.__path__)]
    mods = [m for m in mods if hasattr(m, "run") and (not only or m.DAG_ID in only)]
    return sorted(mods, key=lambda m: m.ORDER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every Caldicott DAG end to end on synthetic data")
    parser.add_argument("--patients", type=int, default=DEMO_PATIENTS)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--only", nargs="*", help="DAG ids to run (default: all)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON document instead of tables (progress still goes to stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ws = Workspace(DEMO)
    t0 = time.monotonic()
    # seeded before the peers start: they serve the organisations in the records (the receiving providers' MESH
    # mailboxes and SFTP connections); prepare() below then finds the records current
    log.info("seeding synthetic records (first time only) ...")
    seed(ws, args.patients, args.seed)
    log.info("starting the stand-in peers (MESH sandbox, SMTP, SFTP) on 127.0.0.1 ...")
    started = peers.start_all_for_demo(ws.root / "peers", records_db=ws.records_db)
    summary: dict[str, dict] = {}
    ok = True
    try:
        extra: dict[str, str] = {}
        for p in started:
            extra.update(p.airflow_env())
        log.info("migrating the databases ...")
        env = prepare(ws, AIRFLOW_HOME, patients=args.patients, seed_value=args.seed, api_port=free_port(),
                      extra=extra)
        log.info("starting Airflow (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1 ...")
        with AirflowStack(env) as stack:
            ctx = DemoContext(stack=stack, workspace=ws, peers={p.name: p for p in started})
            for mod in demo_modules(args.only):
                log.info("running %s ...", mod.DAG_ID)
                summary[mod.DAG_ID] = result = mod.run(ctx)
                ok &= result.get("state") == "success"
    finally:
        for p in started:
            p.stop()
    leaks = scan(ws.records_db, AIRFLOW_HOME)
    ok &= not leaks.hits
    doc = {
        "ok": ok,
        "seconds": round(time.monotonic() - t0),
        "flows": summary,
        "paths": {"records_source": str(ws.records_db), "manifest": str(ws.manifest),
                  "state_database": str(ws.state_db), "outputs": str(ws.outputs), "peers": str(ws.root / "peers"),
                  "airflow_home": str(AIRFLOW_HOME)},
        "leak_scan": {"values_searched": leaks.values_searched, "sources": leaks.sources, "found": len(leaks.hits)},
    }
    ws.root.mkdir(parents=True, exist_ok=True)
    (ws.root / SUMMARY_FILE).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps(doc, indent=2, default=str) if args.json else render(doc))
    return 0 if ok else 1


# ---- the summary, as tables -------------------------------------------------------------------------------------

SUMMARY_FILE = "demo-summary.json"


def render(doc: dict) -> str:
    """The demo's summary for a person: one table per flow, then where everything is."""
    out = ["", "=== Caldicott demo summary ==="]
    for dag_id, result in doc["flows"].items():
        out.append("")
        try:
            out += FORMATTERS.get(dag_id, _generic)(dag_id, result)
        except Exception as exc:   # a formatter must never hide a result: fall back to every key as it came
            log.debug("summary of %s: %s", dag_id, exc)
            out += _generic(dag_id, result)
    p = {k: _short(v) for k, v in doc["paths"].items()}
    leaks = doc["leak_scan"]
    out += ["", "Where things are",
            *_table(("what", "where"), [
                ("records source", f"{p['records_source']}  (ids of the deliberately bad records: {p['manifest']})"),
                ("state database", f"{p['state_database']}  (delivery ledger, quarantine, registers)"),
                ("outputs", f"{p['outputs']}  (reports, staged files, letters for post, disclosure letters)"),
                ("what the peers received", f"{p['peers']}  (SMTP messages, SFTP files; MESH kept in memory)"),
                ("Airflow home", f"{p['airflow_home']}  (task logs under logs/; passwords.json for the UI)"),
                ("this summary as JSON", f"{_short(DEMO / SUMMARY_FILE)}  (or: make demo DEMO_ARGS=--json)"),
                ("click around", "make up, then open the address it prints"),
            ], numeric=False),
            "",
            f"Patient-data scan of Airflow's metadata and task logs: {leaks['values_searched']} values searched in "
            f"{leaks['sources']} sources, {leaks['found']} found.",
            f"Took {doc['seconds']} s; {'all runs succeeded' if doc['ok'] else 'SOME RUNS FAILED'}."]
    return "\n".join(out)


def _short(path) -> str:
    """``path`` relative to the checkout when it is inside it (the demo prints paths a person can paste)."""
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _table(header: tuple[str, ...], rows: list[tuple], *, numeric: bool = True) -> list[str]:
    """Rows under a header, columns aligned; columns of whole numbers right-aligned (``numeric``)."""
    cells = [tuple(header)] + [tuple("-" if c is None else str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    right = [numeric and bool(rows) and all(r[i] == "-" or r[i].isdigit() for r in cells[1:])
             for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "  " + "  ".join(c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right, strict=True))

    return [line(cells[0]).rstrip(), "  " + "  ".join("-" * w for w in widths), *(line(r).rstrip() for r in cells[1:])]


def _heading(title: str, dag_id: str, result: dict, what: str = "") -> str:
    return f"{title} ({dag_id}{', ' + what if what else ''}): {result.get('state', '?')}"


def _para(text: str) -> list[str]:
    """A sentence or two under a heading, wrapped to the tables' indent."""
    return textwrap.wrap(text, WIDTH, initial_indent="  ", subsequent_indent="  ")


WIDTH = 112


def _counts(d: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (d or {}).items()) or "none"


def _total(v) -> int:
    """A count that may come as a number or as counts by reason."""
    return sum(int(x) for x in v.values()) if isinstance(v, dict) else int(v or 0)


def _records_quality(dag_id: str, r: dict) -> list[str]:
    checked = r.get("records_checked") or {}
    rows = [(reason, n) for reason, n in (r.get("by_reason") or {}).items()]
    return [_heading("Records quality", dag_id, r, "the whole records source"),
            *_para(f"{sum(checked.values())} records checked ({_counts(checked)}); {r.get('quarantined')} findings "
                   "quarantined, to be fixed at source (the runbook's 'Finding a quarantined record' says how):"),
            *_table(("reason code", "records"), [*rows, ("total", r.get("quarantined"))])]


def _gp_letters(dag_id: str, r: dict) -> list[str]:
    planned = r.get("planned") or {}
    ledger = r.get("ledger") or []
    done = {kind: sum(x["items"] for x in ledger if x["purpose"] == purpose and x["state"] in DONE)
            for kind, purpose in (("gp", "gp_letter"), ("patient", "patient_copy"))}
    letters = r.get("letters") or 0
    not_sent = []
    for kind, label in (("gp", "GP"), ("patient", "patient")):
        parts = [f"{planned[f'{kind}_{o}']} {o}" for o in ("withheld", "held", "quarantined")
                 if planned.get(f"{kind}_{o}")]
        if parts:
            not_sent.append(f"{label} copies {', '.join(parts)}")
    lines = [_heading("GP letters", dag_id, r, f"events from {r.get('start')} to {r.get('end')}, end exclusive"),
             *_para(f"{letters} letters (first attended assessments and discharges) -> "
                    f"{done['gp'] + done['patient']} sends: {done['gp']} GP copies + {done['patient']} patient "
                    f"copies. Each letter has a copy for the registered GP practice and one for the patient. "
                    f"Not sent: {'; '.join(not_sent) or 'none'} — withheld: the patient declined GP sharing; "
                    f"held: never sent in clear (e.g. a practice without a certificate), waiting for a person; "
                    f"quarantined: a record fault (reasons below)."),
             *_table(("copy", "letters", "sent", "withheld", "held", "quarantined"), [
                 (label, letters, done[kind], planned.get(f"{kind}_withheld"), planned.get(f"{kind}_held"),
                  planned.get(f"{kind}_quarantined"))
                 for kind, label in (("gp", "GP copy"), ("patient", "patient copy"))])]
    rows = []
    for ch in sorted({x["channel"] for x in ledger}):
        mine = [x for x in ledger if x["channel"] == ch]
        sent = {p: sum(x["items"] for x in mine if x["purpose"] == p and x["state"] in DONE) or None
                for p in ("gp_letter", "patient_copy")}
        states: dict[str, int] = {}
        for x in mine:
            states[x["state"]] = states.get(x["state"], 0) + x["items"]
        rows.append((ch, CHANNELS.get(ch, ""), sent["gp_letter"], sent["patient_copy"], _counts(states)))
    lines += ["", "  by channel (from the delivery ledger, so a re-run of the demo reports the same):",
              *_table(("channel", "how", "GP copies", "patient copies", "ledger states"), rows),
              *_para(f"MESH acknowledgements read back: {r.get('acked')} business acks, {r.get('ack_overdue')} "
                     f"overdue. This run sent {r.get('sent')} and found {r.get('already_sent')} already sent. "
                     f"Held and quarantined by reason: {_counts(r.get('quarantined_by_reason'))}.")]
    return lines


CHANNELS = {"smime-email": "S/MIME e-mail to the certificate", "mesh": "GP Connect Send Document over MESH",
            "secure-email": "[secure] e-mail via the NHSmail gateway", "post": "print-and-post file to the print house",
            "sftp": "SFTP (host key pinned)", "outbox": "encrypted file in the outbox"}


def _referrer_updates(dag_id: str, r: dict) -> list[str]:
    deliveries = r.get("deliveries") or []
    by_channel: dict[str, int] = {}
    for d in deliveries:
        by_channel[d["channel"]] = by_channel.get(d["channel"], 0) + 1
    rows = []
    for d in deliveries:
        if d["channel"] == "mesh":
            where = f"MESH mailbox {d['address']} ({d['workflow']}), message {d['transport_ref'] or '-'}"
        else:
            where = d["transport_ref"] or f"{d['address']}/{d['file']}"
        rows.append((d["contract_id"], d["kind"], d["format"], d["channel"], d["state"], where))
    inbox = r.get("mesh_inbox") or {}
    lines = [_heading("Referrer updates", dag_id, r, f"sessions of {r.get('day')}, activity for "
                      f"{r.get('activity_month')}"),
             *_para(f"{len(deliveries)} files for {len({d['contract_id'] for d in deliveries})} contracts "
                    f"({_counts(by_channel)}): each contract's sessions of the day and its month's activity file. "
                    f"This run: {_counts(r.get('files'))}; data rows {_counts(r.get('rows'))}; "
                    f"{_total(r.get('quarantined'))} session records quarantined."),
             *_table(("contract", "kind", "format", "channel", "state", "where it went"), rows)]
    if inbox:
        lines += _para("The MESH files wait in the referrer's mailbox until the referrer collects them: "
                       + ", ".join(f"{m} held {n} message(s) when the demo ended" for m, n in inbox.items())
                       + " (the demo's mesh-sandbox keeps messages in memory, so it starts empty each time: files an "
                         "earlier demo sent are in the ledger, not in the mailbox).")
    if r.get("held"):
        lines += _para(f"Held (not sent; a person decides): {', '.join(r['held'])}.")
    return lines


def _disclosure_request(dag_id: str, r: dict) -> list[str]:
    rows = []
    for name in ("approved", "refused"):
        d = r.get(name) or {}
        rel = d.get("release") or {}
        went = f"{rel.get('channel')}: {rel.get('transport_ref')}" if rel else "nothing released"
        rows.append((f"{d.get('request_type')} {d.get('reference')}", d.get("requester"), d.get("answered_by"),
                     d.get("answer"), d.get("status"), went))
        rows.append(("", "", "", "", "", f"letters: {', '.join(d.get('letters') or []) or 'none'}"))
    runs = r.get("runs")
    return [_heading("Disclosures", dag_id, r, "held for a service manager's approval"),
            *_para(f"{len(rows) // 2} requests, each held at the approval step until an assigned service manager "
                   f"answered (over the REST API, as the UI's Required Actions page does); runs this time: "
                   f"{_counts(runs) if isinstance(runs, dict) else runs}. The outbox is outputs/disclosure-outbox/, "
                   "letters are under outputs/."),
            *_table(("request", "requester", "decided by", "answer", "register", "released to / letters"), rows,
                    numeric=False),
            f"  the register: {r.get('report')}"]


def _generic(dag_id: str, r: dict) -> list[str]:
    """Any flow without a table of its own (or whose result changed shape): every key, nested ones indented."""
    def text(v) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k} {text(x)}" for k, x in v.items()) or "-"
        if isinstance(v, list | tuple):
            return ", ".join(text(x) for x in v) or "-"
        return "-" if v is None else str(v)

    def rows(d: dict, depth: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for k, v in d.items():
            if depth == 0 and k == "state":
                continue
            label = "  " * depth + str(k)
            if isinstance(v, dict) and any(isinstance(x, dict) for x in v.values()):
                out += [(label, ""), *rows(v, depth + 1)]
                continue
            wrapped = textwrap.wrap(text(v), 80) or ["-"]
            out += [(label, wrapped[0]), *(("", more) for more in wrapped[1:])]
        return out

    return [_heading(TITLES.get(dag_id, dag_id), dag_id, r), *_table(("what", "value"), rows(r, 0), numeric=False)]


TITLES = {"monthly_dataset": "Monthly data set", "transfer_of_care": "Transfer of care (patient reports)"}
FORMATTERS = {"records_quality": _records_quality, "gp_letters": _gp_letters, "referrer_updates": _referrer_updates,
              "disclosure_request": _disclosure_request}


if __name__ == "__main__":
    sys.exit(main())

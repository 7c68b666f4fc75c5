"""Open, approved and refused disclosure requests, from the register: ``python -m caldicott.disclosure.report``.

    python -m caldicott.disclosure.report --url sqlite:///var/demo/state.db            # table on stdout
    python -m caldicott.disclosure.report --url ... --status open --csv open.csv --html register.html

``--url`` defaults to ``CALDICOTT_STATE_URL``. The report carries request ids, types, references,
requesters, decisions and checksums: no patient identifiers (the register holds none but local ids, and
the report leaves even those out).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import os
import sys
from collections import Counter
from collections.abc import Sequence

from sqlalchemy import Engine

from caldicott.disclosure.register import requests

COLUMNS = ["disclosure_id", "status", "request_type", "reference", "requester", "legal_basis", "requested_at",
           "decided_at", "decided_by", "escalated", "patient_told", "released_checksum"]


#: One request's line in the report, by column name (``COLUMNS``): ids, names, instants, flags; no patient data.
ReportRow = dict[str, object]


def rows(engine: Engine, status: str | None = None) -> list[ReportRow]:
    out = [{k: r.get(k) for k in COLUMNS} for r in requests(engine)]
    return [r for r in out if status is None or r["status"] == status]


def to_csv(data: Sequence[ReportRow]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(data)
    return buf.getvalue()


def to_html(data: Sequence[ReportRow]) -> str:
    counts = Counter(r["status"] for r in data)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if r[c] is None else str(r[c]))}</td>" for c in COLUMNS)
                   + "</tr>" for r in data)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no requests"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Disclosure register</title>"
            f"<style>body{{font-family:sans-serif}}td,th{{border:1px solid #ccc;padding:4px;font-size:13px}}"
            f"table{{border-collapse:collapse}}</style></head><body><h1>Disclosure register</h1>"
            f"<p>{html.escape(summary)}</p><table><tr>{head}</tr>{body}</table></body></html>")


def to_text(data: Sequence[ReportRow]) -> str:
    cols = ["disclosure_id", "status", "request_type", "reference", "requester", "decided_by", "decided_at"]
    widths = {c: max([len(c)] + [len(str(r[c] or "")) for r in data]) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c] or "").ljust(widths[c]) for c in cols) for r in data]
    counts = Counter(r["status"] for r in data)
    lines.append("; ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no requests")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List open, approved and refused disclosure requests")
    parser.add_argument("--url", default=os.environ.get("CALDICOTT_STATE_URL"), help="state database URL")
    parser.add_argument("--status", choices=["open", "approved", "released", "refused", "withdrawn"])
    parser.add_argument("--csv", help="also write CSV here")
    parser.add_argument("--html", help="also write HTML here")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("--url (or CALDICOTT_STATE_URL) is required")
    from caldicott.db import make_engine

    data = rows(make_engine(args.url), args.status)
    if args.csv:
        with open(args.csv, "w", encoding="utf-8") as fh:
            fh.write(to_csv(data))
    if args.html:
        with open(args.html, "w", encoding="utf-8") as fh:
            fh.write(to_html(data))
    sys.stdout.write(to_text(data) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The monthly data-quality and outcomes report a service manager reads: HTML, with its figures as CSV.

One report per submission (a period's primary or refresh), in the submission's folder. It says whose it is
(provider name and ODS code), when it was generated and for which submission window; marks each national measure
against its standard (a measure below standard stands out, the recovery rate first of all); shows the last 12
months from the state database (each month's measures are kept in ``dataset_submission.facts``, so the trend needs
no old archive); states the opt-out figures as they are (``pending`` until NHS England's opt-out check has answered,
never a placeholder number); and links the quarantine list (``quarantine.csv``: table, opaque id, rule) instead of
repeating it. Charts are inline SVG drawn to their data: one bar per item, the height follows the number of items,
and a chart with nothing to show is not drawn.

Measures (national programme definitions), over the referrals in the submission after screening and opt-outs;
dates are London dates:

* **referrals received**: ``ReferralRequestReceivedDate`` in the month;
* **entered treatment**: first attended treatment contact (AppType 02/03/04, attended 5/6) in the month;
* **finished a course of treatment**: discharged in the month with at least two attended treatment contacts;
* **waiting-time standards**: of those finishing, first treatment within 6 weeks (42 days) and 18 weeks
  (126 days) of referral (standards 75% and 95%);
* **recovery**: of those finishing *at caseness* at the start (first PHQ-9 ≥ 10 or first GAD-7 ≥ 8), last
  PHQ-9 < 10 and last GAD-7 < 8 (standard 50%);
* **reliable improvement**: of those finishing with paired scores, PHQ-9 down ≥ 6 or GAD-7 down ≥ 4, and
  neither up by that much.

Everything in the report is a count, a percentage or an opaque id (quarantine CSV): nothing identifies a patient.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from caldicott.dataset.builder import LONDON, Dataset
from caldicott.dataset.rules import CATALOGUE
from caldicott.state.quarantine import Quarantined

#: measure -> (standard %, label). A measure at or above its standard meets it.
STANDARDS: dict[str, tuple[float, str]] = {
    "waited_6_weeks_pct": (75.0, "first treatment within 6 weeks"),
    "waited_18_weeks_pct": (95.0, "first treatment within 18 weeks"),
    "recovery_rate_pct": (50.0, "recovery rate"),
}
LABELS: dict[str, str] = {
    "referrals_received": "referrals received in the month",
    "referrals_open": "referrals open in the month",
    "entered_treatment": "entered treatment",
    "finished_treatment": "finished a course of treatment",
    "waited_6_weeks_or_less": "finished, first treatment within 6 weeks",
    "waited_6_weeks_pct": "% first treatment within 6 weeks",
    "waited_18_weeks_or_less": "finished, first treatment within 18 weeks",
    "waited_18_weeks_pct": "% first treatment within 18 weeks",
    "finished_at_caseness": "finished at caseness",
    "recovered": "recovered",
    "recovery_rate_pct": "recovery rate %",
    "finished_with_paired_scores": "finished with paired scores",
    "reliably_improved": "reliably improved",
    "reliable_improvement_pct": "reliable improvement %",
}
TREND_MONTHS = 12


def measures(ds: Dataset) -> dict[str, float | int | None]:
    ref = ds.tables["IDS101Referral"]
    first, end = pd.Timestamp(ds.period.first), pd.Timestamp(ds.period.end)
    h = ds.history.set_index("service_request_id") if len(ds.history) else pd.DataFrame()
    ids = ref["ServiceRequestId"].astype(object)
    received = ref["ReferralRequestReceivedDate"]

    def col(name: str, default: object = np.nan) -> pd.Series:
        if name not in h:
            return pd.Series(default, index=ref.index)
        return pd.Series(h[name].reindex(ids).to_numpy(), index=ref.index)

    ft = pd.to_datetime(col("first_treatment_at", pd.NaT))
    ft_local = ft.dt.tz_localize("UTC").dt.tz_convert(LONDON).dt.tz_localize(None).dt.normalize()
    tc = pd.to_numeric(col("treatment_contacts", 0), errors="coerce").fillna(0)
    disch = ref["ServDischDate"]
    finished = ((disch >= first) & (disch < end) & (tc >= 2)).to_numpy(dtype=bool)
    wait = (ft_local - received).dt.days
    fp, lp = pd.to_numeric(col("first_phq9"), errors="coerce"), pd.to_numeric(col("last_phq9"), errors="coerce")
    fg, lg = pd.to_numeric(col("first_gad7"), errors="coerce"), pd.to_numeric(col("last_gad7"), errors="coerce")
    paired = fp.notna() & lp.notna() & fg.notna() & lg.notna()
    caseness = paired & ((fp >= 10) | (fg >= 8))
    recovered = caseness & (lp < 10) & (lg < 8)
    improved = paired & (((fp - lp) >= 6) | ((fg - lg) >= 4)) & ~(((lp - fp) >= 6) | ((lg - fg) >= 4))
    f = pd.Series(finished, index=ref.index)

    def pct(num: int, den: int) -> float | None:
        return round(100.0 * num / den, 1) if den else None

    n_fin = int(f.sum())
    n_case = int((f & caseness).sum())
    n_paired = int((f & paired).sum())
    w6 = int((f & (wait <= 42)).sum())
    w18 = int((f & (wait <= 126)).sum())
    return {
        "referrals_received": int(((received >= first) & (received < end)).sum()),
        "referrals_open": len(ref),
        "entered_treatment": int(((ft_local >= first) & (ft_local < end)).sum()),
        "finished_treatment": n_fin,
        "waited_6_weeks_or_less": w6, "waited_6_weeks_pct": pct(w6, n_fin),
        "waited_18_weeks_or_less": w18, "waited_18_weeks_pct": pct(w18, n_fin),
        "finished_at_caseness": n_case, "recovered": int((f & recovered).sum()),
        "recovery_rate_pct": pct(int((f & recovered).sum()), n_case),
        "finished_with_paired_scores": n_paired, "reliably_improved": int((f & improved).sum()),
        "reliable_improvement_pct": pct(int((f & improved).sum()), n_paired),
    }


def facts(ds: Dataset, failures: dict[str, int], quarantined: list[Quarantined],
          blanked: dict[str, int] | None = None) -> dict[str, Any]:
    """The report's figures, JSON-safe (kept in ``dataset_submission.facts`` for re-rendering and the trend).

    ``blanked``: rule code -> cells screening blanked (the record was submitted with that field empty)."""
    by_rule: dict[str, int] = {}
    for q in quarantined:
        by_rule[q.reason_code] = by_rule.get(q.reason_code, 0) + 1
    return {"counts": {k: int(v) for k, v in ds.counts().items()},
            "rule_failures": {k: int(v) for k, v in sorted(failures.items())},
            "quarantined_by_rule": dict(sorted(by_rule.items())),
            "quarantined": len(quarantined),
            "blanked_by_rule": {k: int(v) for k, v in sorted((blanked or {}).items())},
            "blanked": int(sum((blanked or {}).values())),
            "measures": measures(ds)}


def standard_status(name: str, value: float | None) -> str | None:
    """``meets`` / ``below`` for a measure with a national standard, ``no data`` without a denominator."""
    if name not in STANDARDS:
        return None
    if value is None:
        return "no data"
    return "meets" if value >= STANDARDS[name][0] else "below"


@dataclass(frozen=True)
class Provider:
    ods_code: str
    name: str = ""


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    figures_csv: Path
    quarantine_csv: Path


def write_quarantine(out_dir: Path, quarantined: list[Quarantined], blanked: list[Quarantined] | None = None) -> Path:
    """``quarantine.csv``: table, opaque record id, rule code, and the action: ``removed`` (the record was held back)
    or ``blanked <column>`` (submitted with that field empty; the list the report links to)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "quarantine.csv"
    rows = [(q.record_type, q.record_id, q.reason_code, "removed") for q in quarantined]
    rows += [(q.record_type, q.record_id, q.reason_code, q.reason.split(":", 1)[0]) for q in blanked or []]
    pd.DataFrame(rows, columns=["table", "record_id", "rule_code", "action"]).to_csv(path, index=False)
    return path


TrendRow = tuple[str, str, dict[str, Any]]
"""``(period, kind, measures)`` of one month in the report's trend."""


def trend(history: list[dict[str, Any]], period: str, months: int = TREND_MONTHS) -> list[TrendRow]:
    """``(period, kind, measures)`` for each of the ``months`` periods up to ``period`` that the state database holds:
    the refresh where there is one (it has the later data), else the primary."""
    best: dict[str, dict[str, Any]] = {}
    for row in history:
        if row["run_key"] > period or not (row.get("facts") or {}).get("measures"):
            continue
        have = best.get(row["run_key"])
        if have is None or row["kind"] == "refresh":
            best[row["run_key"]] = row
    keys = sorted(best)[-months:]
    return [(k, best[k]["kind"], best[k]["facts"]["measures"]) for k in keys]


# ---- HTML -------------------------------------------------------------------------------------------------

def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def _bars(chart_id: str, title: str, items: list[tuple[str, float]], color: str) -> str:
    """A horizontal bar chart as inline SVG: one bar per item, height from the number of items; nothing if empty."""
    if not items:
        return f'<p class="none" id="{_e(chart_id)}-none">{_e(title)}: none.</p>'
    row, label_w, bar_w = 22, 210, 330
    height = row * len(items) + 6
    top = max(v for _, v in items) or 1
    width = label_w + bar_w + 70
    parts = [f'<svg class="chart" id="{_e(chart_id)}" role="img" aria-label="{_e(title)}" width="{width}"'
             f' height="{height}" viewBox="0 0 {width} {height}" data-rows="{len(items)}">',
             f"<title>{_e(title)}</title>"]
    for i, (label, value) in enumerate(items):
        y = 3 + i * row
        w = max(1.0, bar_w * float(value) / top)
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" fill="{color}"'
                     f' data-label="{_e(label)}" data-value="{_e(_fmt(value))}"></rect>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 15}">{_e(_fmt(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _trend_chart(points: list[tuple[str, float | None]]) -> str:
    """Recovery rate per month against the 50% standard, as inline SVG sized to the months shown."""
    values = [(p, v) for p, v in points if v is not None]
    if not values:
        return '<p class="none" id="trend-chart-none">No recovery rate in the months held yet.</p>'
    step, left, h = 56, 40, 160
    width = left + step * len(points) + 20

    def y(v: float) -> float:
        return 10 + (100 - v) * (h - 30) / 100

    parts = [f'<svg class="chart" id="trend-chart" role="img" aria-label="recovery rate by month" width="{width}"'
             f' height="{h}" viewBox="0 0 {width} {h}" data-rows="{len(points)}">',
             "<title>recovery rate by month</title>",
             f'<line class="standard" x1="{left}" x2="{width - 10}" y1="{y(50):.1f}" y2="{y(50):.1f}" '
             'stroke="#d5281b" stroke-dasharray="4 3"></line>',
             f'<text x="2" y="{y(50) + 4:.1f}">50%</text>']
    xs = {p: left + step * i + step / 2 for i, (p, _) in enumerate(points)}
    line = " ".join(f"{xs[p]:.1f},{y(v):.1f}" for p, v in values)
    parts.append(f'<polyline points="{line}" fill="none" stroke="#005eb8" stroke-width="2"></polyline>')
    for p, v in values:
        cls = "below" if v < 50 else "meets"
        parts.append(f'<circle class="{cls}" cx="{xs[p]:.1f}" cy="{y(v):.1f}" r="4" data-period="{_e(p)}"'
                     f' data-value="{_e(_fmt(v))}" fill="{"#d5281b" if cls == "below" else "#005eb8"}"></circle>')
    for p in xs:
        parts.append(f'<text x="{xs[p]:.1f}" y="{h - 4}" text-anchor="middle">{_e(p[2:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...], *, table_id: str,
           row_classes: list[str] | None = None) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join(f'<tr class="{_e(row_classes[i]) if row_classes else ""}">'
                  + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for i, r in enumerate(rows))
    return f'<table id="{_e(table_id)}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def _optout_rows(statement: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    rows = []
    for r in (statement or {}).get("rules", []):
        counts = r.get("counts") or {}
        shown = []
        for k, v in counts.items():
            if isinstance(v, dict):
                continue
            shown.append(f"{k.replace('_', ' ')}: " + ("pending (the opt-out check has not answered yet)"
                                                       if v is None else str(v)))
        rows.append((r["rule"].replace("_", " "), r["output"].replace("_", " "), "; ".join(shown) or "-"))
    return rows


CSS = ("body{font-family:Arial,sans-serif;margin:2em;max-width:64em;color:#212b32}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
       "tr.below td{background:#fde8e6;color:#8a1538;font-weight:bold}tr.meets td.status{color:#007f3b}"
       ".alert{border-left:8px solid #d5281b;background:#fde8e6;padding:.6em 1em;font-weight:bold}"
       ".meta td{border:none;padding:1px 12px 1px 0}svg.chart text{font-size:12px}p.none{color:#4c6272}")


def render(*, period: str, kind: str, version: str, provider: Provider, facts: dict[str, Any],
           statement: dict[str, Any] | None, trend_rows: list[TrendRow], window: dict[str, Any] | None,
           generated_at: dt.datetime) -> str:
    """The report's HTML (every value escaped; counts, percentages and opaque rule codes only)."""
    m = facts.get("measures") or {}
    london = generated_at.astimezone(ZoneInfo("Europe/London"))
    below = [k for k in STANDARDS if standard_status(k, m.get(k)) == "below"]
    name = provider.name or "(service name not configured)"
    meta = [("Provider", f"{name} ({provider.ods_code})"), ("ODS code", provider.ods_code),
            ("Reporting period", f"{period} ({kind} submission)"), ("Data set version", version),
            ("Generated", london.strftime("%Y-%m-%d %H:%M %Z"))]
    if window:
        meta.append(("Submission window", f"opens {window['opens']}, closes {window['closes']} "
                                          f"(takes {window['primary']} primary, {window['refresh']} refresh)"))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(f'NHS Talking Therapies data set {period} {kind} - {provider.ods_code}')}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>NHS Talking Therapies data set — {_e(period)} {_e(kind)}</h1>",
        "<table class='meta' id='meta'>" + "".join(
            f"<tr><td>{_e(k)}</td><td id='meta-{_e(k.lower().replace(' ', '-'))}'>{_e(v)}</td></tr>"
            for k, v in meta) + "</table>",
    ]
    for k in below:
        threshold, label = STANDARDS[k]
        parts.append(f"<p class='alert' id='alert-{_e(k)}'>{_e(label.capitalize())} {_e(_fmt(m.get(k)))}% is below "
                     f"the national standard of {threshold:g}%.</p>")
    rows, classes = [], []
    for k, v in m.items():
        status = standard_status(k, v)
        std = f"{STANDARDS[k][0]:g}%" if k in STANDARDS else "-"
        text = {"meets": "meets standard", "below": "BELOW STANDARD", "no data": "no data (none finished)",
                None: ""}[status]
        rows.append((LABELS.get(k, k.replace("_", " ")), _fmt(v), std, text))
        classes.append(status.replace(" ", "-") if status else "")
    parts += ["<h2>National measures</h2>",
              _table(rows, ("measure", "value", "standard", "against standard"), table_id="measures",
                     row_classes=classes)]

    parts.append(f"<h2>Last {TREND_MONTHS} months</h2>")
    if trend_rows:
        parts.append(_trend_chart([(p, ms.get("recovery_rate_pct")) for p, _, ms in trend_rows]))
        parts.append(_table([(p, kd, _fmt(ms.get("referrals_received")), _fmt(ms.get("entered_treatment")),
                              _fmt(ms.get("finished_treatment")), _fmt(ms.get("waited_6_weeks_pct")),
                              _fmt(ms.get("waited_18_weeks_pct")), _fmt(ms.get("recovery_rate_pct")))
                             for p, kd, ms in trend_rows],
                            ("month", "from", "referrals", "entered treatment", "finished", "% ≤ 6 weeks",
                             "% ≤ 18 weeks", "recovery %"), table_id="trend",
                            row_classes=["below" if standard_status("recovery_rate_pct", ms.get("recovery_rate_pct"))
                                         == "below" else "" for _, _, ms in trend_rows]))
    else:
        parts.append("<p class='none'>No earlier months in the state database yet.</p>")

    counts = facts.get("counts") or {}
    parts += ["<h2>Records per table</h2>", _bars("records-chart", "records per table", list(counts.items()),
                                                   "#005eb8"),
              _table(list(counts.items()), ("table", "records"), table_id="records")]

    failures = facts.get("rule_failures") or {}
    qby = facts.get("quarantined_by_rule") or {}
    bby = facts.get("blanked_by_rule") or {}
    top = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[:25]
    parts += ["<h2>Validation</h2>",
              f"<p id='quarantine-summary'>{_e(facts.get('quarantined', 0))} record(s) quarantined; each is listed "
              "(table, opaque id, rule) in <a id='quarantine-link' href='quarantine.csv'>quarantine.csv</a>.</p>",
              f"<p id='blanked-summary'>{_e(facts.get('blanked', 0))} field value(s) blanked (submitted empty, as a "
              "blank is only a warning nationally); listed there too, with the action 'blanked'.</p>",
              _bars("failures-chart", "records failing each rule (top 25)", top, "#d5281b"),
              _table([(c, CATALOGUE.get(c, ("?", "", ""))[0], n, qby.get(c, 0), bby.get(c, 0),
                       CATALOGUE.get(c, ("", "", ""))[2])
                      for c, n in top], ("rule", "severity", "records failing", "quarantined", "blanked", "message"),
                     table_id="rules")]
    parts += ["<h2>Opt-outs applied</h2>",
              _table(_optout_rows(statement), ("rule", "output", "figures"), table_id="optouts")]
    parts.append("</body></html>")
    return "".join(parts)


def figures_frame(facts: dict[str, Any]) -> pd.DataFrame:
    rows = [("table_rows", k, v) for k, v in (facts.get("counts") or {}).items()]
    rows += [("rule_failures", k, v) for k, v in (facts.get("rule_failures") or {}).items()]
    rows += [("quarantined_by_reason", k, v) for k, v in (facts.get("quarantined_by_rule") or {}).items()]
    rows += [("measures", k, v) for k, v in (facts.get("measures") or {}).items()]
    return pd.DataFrame(rows, columns=["section", "name", "value"], dtype=object)


def write_report(out_dir: Path, *, period: str, kind: str, version: str, provider: Provider, facts: dict[str, Any],
                 statement: dict[str, Any] | None = None, trend_rows: list[TrendRow] | None = None,
                 window: dict[str, Any] | None = None, generated_at: dt.datetime | None = None) -> ReportFiles:
    """Write ``report.html`` and ``figures.csv`` into ``out_dir`` (``quarantine.csv``: :func:`write_quarantine`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_frame(facts).to_csv(out_dir / "figures.csv", index=False)
    page = render(period=period, kind=kind, version=version, provider=provider, facts=facts, statement=statement,
                  trend_rows=trend_rows or [], window=window, generated_at=generated_at or dt.datetime.now(dt.UTC))
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return ReportFiles(out_dir / "report.html", out_dir / "figures.csv", out_dir / "quarantine.csv")

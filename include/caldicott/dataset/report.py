"""The monthly data-quality and outcomes report for service managers: HTML with charts, figures as CSV.

Measures (national programme definitions, DESIGN.md), over the referrals in the submission after
screening and opt-outs; dates are London dates:

* **referrals received**: ``ReferralRequestReceivedDate`` in the month;
* **entered treatment**: first attended treatment contact (AppType 02/03/04, attended 5/6) in the month;
* **finished a course of treatment**: discharged in the month with at least two attended treatment contacts;
* **waiting-time standards**: of those finishing, first treatment within 6 weeks (42 days) and 18 weeks
  (126 days) of referral (standards 75% and 95%);
* **recovery**: of those finishing *at caseness* at the start (first PHQ-9 ≥ 10 or first GAD-7 ≥ 8), last
  PHQ-9 < 10 and last GAD-7 < 8 (target 50%);
* **reliable improvement**: of those finishing with paired scores, PHQ-9 down ≥ 6 or GAD-7 down ≥ 4, and
  neither up by that much.

Everything in the report is a count or an opaque id (quarantine CSV): nothing identifies a patient.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from caldicott.dataset.builder import LONDON, Dataset
from caldicott.dataset.rules import CATALOGUE
from caldicott.state.quarantine import Quarantined


def measures(ds: Dataset) -> dict[str, float | int | None]:
    ref = ds.tables["IDS101Referral"]
    first, end = pd.Timestamp(ds.period.first), pd.Timestamp(ds.period.end)
    h = ds.history.set_index("service_request_id") if len(ds.history) else pd.DataFrame()
    ids = ref["ServiceRequestId"].astype(object)
    received = ref["ReferralRequestReceivedDate"]

    def col(name: str, default=np.nan) -> pd.Series:
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


def _chart(title: str, labels: list[str], values: list[float], *, color: str = "#005eb8") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, max(1.6, 0.32 * len(labels) + 0.8)))
    try:
        if labels:
            ax.barh(labels[::-1], values[::-1], color=color)
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center")
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    figures_csv: Path
    quarantine_csv: Path


def figures(ds: Dataset, failures: dict[str, int], quarantined: list[Quarantined], m: dict) -> pd.DataFrame:
    rows = [("table_rows", k, v) for k, v in ds.counts().items()]
    rows += [("rule_failures", code, n) for code, n in sorted(failures.items())]
    by_reason: dict[str, int] = {}
    for q in quarantined:
        by_reason[q.reason_code] = by_reason.get(q.reason_code, 0) + 1
    rows += [("quarantined_by_reason", k, v) for k, v in sorted(by_reason.items())]
    rows += [("measures", k, v) for k, v in m.items()]
    return pd.DataFrame(rows, columns=["section", "name", "value"], dtype=object)


def write_report(ds: Dataset, failures: dict[str, int], quarantined: list[Quarantined], out_dir: Path, *,
                 statement: dict | None = None) -> ReportFiles:
    """Write ``report.html``, ``figures.csv`` and ``quarantine.csv`` (opaque ids) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    m = measures(ds)
    fig = figures(ds, failures, quarantined, m)
    fig.to_csv(out_dir / "figures.csv", index=False)
    pd.DataFrame([(q.record_type, q.record_id, q.reason_code) for q in quarantined],
                 columns=["table", "record_id", "rule_code"]).to_csv(out_dir / "quarantine.csv", index=False)
    counts = ds.counts()
    by_reason = fig[fig.section == "quarantined_by_reason"]
    fails = sorted(failures.items(), key=lambda kv: -kv[1])[:25]

    def table(rows: list[tuple], head: tuple) -> str:
        th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{th}</tr>{trs}</table>"

    nice = {"waited_6_weeks_pct": "% waited ≤ 6 weeks (standard 75%)",
            "waited_18_weeks_pct": "% waited ≤ 18 weeks (standard 95%)",
            "recovery_rate_pct": "recovery rate % (target 50%)"}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Monthly data set report</title>",
        "<style>body{font-family:Arial,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style></head><body>",
        f"<h1>NHS Talking Therapies data set — {html.escape(ds.period.key)} (v{html.escape(ds.version)})</h1>",
        "<p>Counts and opaque record ids only. Quarantined records are listed in quarantine.csv.</p>",
        "<h2>National measures</h2>", table([(nice.get(k, k.replace("_", " ")), "-" if v is None else v)
                                              for k, v in m.items()], ("measure", "value")),
        "<h2>Records per table</h2>", _chart("records per table", list(counts), list(counts.values())),
        table(list(counts.items()), ("table", "records")),
        "<h2>Rule failures by code</h2>",
        _chart("rule failures (top 25)", [c for c, _ in fails], [n for _, n in fails], color="#d5281b"),
        table([(c, CATALOGUE.get(c, ("?", "", ""))[0], n, CATALOGUE.get(c, ("", "", ""))[2]) for c, n in fails],
              ("code", "severity", "records", "message")),
        "<h2>Quarantined records by reason</h2>",
        _chart("quarantined by rule", by_reason["name"].tolist(), by_reason["value"].tolist(), color="#ffb81c"),
        table([(r.name, r.value) for r in by_reason.itertuples()], ("rule", "records")),
    ]
    if statement:
        parts += ["<h2>Opt-outs applied</h2>",
                  table([(r["rule"], r["output"], ", ".join(f"{k}={v}" for k, v in r["counts"].items()
                                                            if not isinstance(v, dict)))
                         for r in statement["rules"]], ("rule", "output", "counts"))]
    parts.append("</body></html>")
    (out_dir / "report.html").write_text("".join(parts))
    return ReportFiles(out_dir / "report.html", out_dir / "figures.csv", out_dir / "quarantine.csv")

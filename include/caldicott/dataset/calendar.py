"""NHS England's submission calendar: which reporting periods each window takes, and when it closes.

NHS England takes every reporting month twice. In the window that opens after the month it takes the month as a
**primary** submission; in the next window it takes the whole month again, with the data entered since, as a
**refresh**. So each window takes two periods (the previous month, primary; the month before, refresh). Windows
open on the 1st and close on a day NHS England publishes each year (between the 22nd and the 29th): the close is a
fact to load, not a day to compute. A service loads next year's calendar when it is published (docs/runbook.md).

Where the calendar comes from, first found wins (:func:`load`):

1. the Airflow Variable ``caldicott_dataset_calendar`` (the calendar's TSV text), read by the Airflow side;
2. the file named by ``CALDICOTT_DATASET_CALENDAR`` (a TSV file on the workers and the scheduler);
3. the bundled default, ``iapt_submission_calendar.tsv`` beside this module: NHS England's published windows
   2022-05 to 2025-03 (source in its header).

The format is NHS England's: tab-separated ``window_opens  window_closes  refresh_period  primary_period``
(dates ``YYYY-MM-DD``, periods ``YYYY-MM``); lines starting with ``#`` are comments. A period the calendar does not
cover fails with :class:`PeriodNotInCalendar`, naming the period and what the calendar covers: guessing a close
day would put the deadline alert on the wrong day.

A window is taken to close at the END of its published close day, London time: the calendar gives the day, not
SDCS's cut-off hour. Deadline alerts fire a configurable lead before that instant, so they are early, not late.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo

LONDON = ZoneInfo("Europe/London")
BUNDLED = Path(__file__).with_name("iapt_submission_calendar.tsv")
#: the Airflow Variable holding a calendar's TSV text (read by caldicott_airflow.dataset and .deadlines)
VARIABLE = "caldicott_dataset_calendar"
#: the environment variable naming a calendar file
PATH_ENV = "CALDICOTT_DATASET_CALENDAR"
HEADER = ("window_opens", "window_closes", "refresh_period", "primary_period")


class Kind(StrEnum):
    """Which of its two submissions a reporting period is in a window."""

    PRIMARY = "primary"   # the month, in the window after it
    REFRESH = "refresh"   # the whole month again, with later data, in the window after that


class CalendarError(ValueError):
    """The calendar cannot be read or is inconsistent. Not transient: a person must load a good one."""


class PeriodNotInCalendar(CalendarError):
    """No window of the calendar takes this period (a year whose calendar was not loaded)."""


def _month(key: str) -> dt.date:
    try:
        return dt.date.fromisoformat(f"{key}-01")
    except ValueError as exc:
        raise CalendarError(f"not a reporting period (YYYY-MM): {key[:20]!r}") from exc


def month_before(key: str) -> str:
    first = _month(key)
    return (first - dt.timedelta(days=1)).strftime("%Y-%m")


def month_after(key: str) -> str:
    first = _month(key)
    return (first + dt.timedelta(days=32)).strftime("%Y-%m")


@dataclass(frozen=True)
class Window:
    """One submission window: the days it is open and the two periods it takes."""

    opens: dt.date
    closes: dt.date
    refresh: str
    primary: str

    def period(self, kind: Kind) -> str:
        return self.primary if kind == Kind.PRIMARY else self.refresh

    @property
    def closes_at(self) -> dt.datetime:
        """The end of the published close day in London, as an aware UTC instant."""
        end = dt.datetime.combine(self.closes + dt.timedelta(days=1), dt.time(0), tzinfo=LONDON)
        return end.astimezone(dt.UTC)

    def is_closed(self, now: dt.datetime) -> bool:
        return now >= self.closes_at

    def submissions(self) -> list[tuple[str, Kind]]:
        """The (period, kind) pairs this window takes, primary first."""
        return [(self.primary, Kind.PRIMARY), (self.refresh, Kind.REFRESH)]

    def as_dict(self) -> dict[str, str]:
        """Patient-free, JSON-safe (XCom, reports)."""
        return {"opens": self.opens.isoformat(), "closes": self.closes.isoformat(), "primary": self.primary,
                "refresh": self.refresh, "closes_at": self.closes_at.isoformat()}


@dataclass(frozen=True)
class Calendar:
    """The windows of a loaded calendar, and where it came from (``source``: bundled, a path, the Variable)."""

    windows: tuple[Window, ...]
    source: str

    def covers(self) -> str:
        if not self.windows:
            return "nothing"
        return f"primary periods {self.windows[0].primary} to {self.windows[-1].primary}"

    def window(self, period: str, kind: Kind = Kind.PRIMARY) -> Window:
        """The window that takes ``period`` as ``kind``; :class:`PeriodNotInCalendar` if none does."""
        for w in self.windows:
            if w.period(kind) == period:
                return w
        raise PeriodNotInCalendar(
            f"reporting period {period} ({kind.value}) is not in the submission calendar ({self.source}: "
            f"{self.covers()}); load NHS England's calendar for that year (Variable {VARIABLE} or "
            f"{PATH_ENV}; docs/runbook.md)")

    def window_open_on(self, day: dt.date) -> Window | None:
        """The (first) window open on ``day`` (London date), if any."""
        return next((w for w in self.windows if w.opens <= day <= w.closes), None)


def parse(text: str, source: str = "text") -> Calendar:
    """Read a calendar in NHS England's TSV format and check it hangs together (raises :class:`CalendarError`)."""
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not rows or tuple(c.strip() for c in rows[0].split("\t")) != HEADER:
        raise CalendarError(f"calendar {source}: the first line must be the header {' / '.join(HEADER)} "
                            "(tab-separated)")
    windows: list[Window] = []
    for n, line in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) != 4:
            raise CalendarError(f"calendar {source}, row {n}: expected 4 tab-separated columns")
        try:
            opens, closes = dt.date.fromisoformat(cells[0]), dt.date.fromisoformat(cells[1])
        except ValueError as exc:
            raise CalendarError(f"calendar {source}, row {n}: dates must be YYYY-MM-DD") from exc
        refresh, primary = cells[2], cells[3]
        _month(refresh), _month(primary)
        if closes < opens:
            raise CalendarError(f"calendar {source}, row {n}: the window closes before it opens")
        if refresh != month_before(primary):
            raise CalendarError(f"calendar {source}, row {n}: the refresh period must be the month before the "
                                "primary period")
        if opens < _month(month_after(primary)):
            raise CalendarError(f"calendar {source}, row {n}: a window cannot open before its primary month ends")
        windows.append(Window(opens, closes, refresh, primary))
    windows.sort(key=lambda w: w.opens)
    seen: set[str] = set()
    for w in windows:
        if w.primary in seen:
            raise CalendarError(f"calendar {source}: two windows take {w.primary} as their primary period")
        seen.add(w.primary)
    return Calendar(tuple(windows), source)


def bundled() -> Calendar:
    return parse(BUNDLED.read_text(encoding="utf-8"), "bundled default")


def load(variable_text: str | None = None, path: str | os.PathLike[str] | None = None) -> Calendar:
    """The calendar in force: the Variable's text, else the file at ``path`` (default ``$CALDICOTT_DATASET_CALENDAR``),
    else the bundled default."""
    if variable_text and variable_text.strip():
        return parse(variable_text, f"Variable {VARIABLE}")
    path = path or os.environ.get(PATH_ENV) or None
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise CalendarError(f"calendar file {p.name} ({PATH_ENV}) cannot be read: {type(exc).__name__}") from exc
        return parse(text, f"file {p.name}")
    return bundled()


def render(windows: list[Window], comment: str = "") -> str:
    """A calendar file's text (the inverse of :func:`parse`)."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    body = "".join(f"{w.opens}\t{w.closes}\t{w.refresh}\t{w.primary}\n" for w in windows)
    return head + "\t".join(HEADER) + "\n" + body


__all__ = ["BUNDLED", "PATH_ENV", "VARIABLE", "Calendar", "CalendarError", "Kind", "PeriodNotInCalendar", "Window",
           "bundled", "load", "month_after", "month_before", "parse", "render"]

"""Letters rendered to PDF in a worker process, a window ahead of the sending process.

Why: rendering (Jinja2 → fpdf2, pure Python) is most of a letter's CPU, and a task runs on one core while the
machines it runs on have more. :func:`render_pdfs` hands each letter to a worker process and yields the PDFs
back **in order**, up to :data:`WINDOW` letters ahead, so the sending process protects, releases and sends letter
*n* while the worker renders *n + 1 …*. Everything with an effect stays in the sending process: the ledger claims,
the sends and their ``sent`` marks are the gateway's (:func:`caldicott.gateway.release`), exactly as when letters
were rendered inline. Rendering is pure (letter content in, PDF bytes out; the worker opens no database, holds no
key and reaches no peer), so:

* a worker that dies (OOM kill, ``kill -9``) breaks the stream with :class:`RenderWorkerLost` at the first letter
  it owed: the letters yielded before it go as usual, the rest stay ``intended`` in the ledger and the task's retry
  (or the next run) renders them again — nothing is sent twice, nothing is lost;
* a sending process that dies takes nothing with it: its worker notices (its parent is gone) and exits within a
  second (:func:`_watch_parent`), so no orphan renderer is left behind a killed Airflow worker.

The pool is one per process, started on first use with the ``spawn`` method (no ``fork`` of a process that may
run threads, such as an Airflow task) and reused by later batches in the same process; it is used only when a
batch has at least :data:`MIN_LETTERS` letters, since starting a worker (~0.5 s of CPU, imports) costs more than
rendering a handful inline. ``CALDICOTT_RENDER_PROCESSES=0`` renders every letter inline; if a process cannot
start one (e.g. a daemonic executor process), letters are rendered inline and a warning says so.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import itertools
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caldicott.letters.build import LetterData
    from caldicott.letters.service import Service

log = logging.getLogger(__name__)

#: letters rendered ahead of the one being sent (two gateway chunks: what inline rendering kept in memory)
WINDOW = 64
#: letters per task sent to the worker (fewer, larger messages between the processes)
GROUP = 8
#: a batch smaller than this is rendered inline (starting a worker costs more than it saves)
MIN_LETTERS = 64
#: the fields of a LetterData a template reads (:func:`caldicott.letters.render.context`)
_FIELDS = ("referral_id", "event", "event_date", "patient", "practice", "referral", "scores", "outcome")


class RenderWorkerLost(RuntimeError):
    """The render worker process died mid-batch. Letters not yet released stay ``intended`` for the retry."""


def processes() -> int:
    """Worker processes to render in (``CALDICOTT_RENDER_PROCESSES``; default 1: one core renders while the
    task's own core protects and sends; 0: inline)."""
    raw = os.environ.get("CALDICOTT_RENDER_PROCESSES", "").strip()
    try:
        return max(0, int(raw)) if raw else 1
    except ValueError:
        return 1


def min_letters() -> int:
    """Smallest batch rendered in the pool (``CALDICOTT_RENDER_POOL_MIN``, default :data:`MIN_LETTERS`)."""
    raw = os.environ.get("CALDICOTT_RENDER_POOL_MIN", "").strip()
    try:
        return max(0, int(raw)) if raw else MIN_LETTERS
    except ValueError:
        return MIN_LETTERS


# ---- the worker side ------------------------------------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    """Exit when the process that started this worker is gone (it was killed: nobody will read our output)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def _init_worker(parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), name="render-parent-watch", daemon=True).start()
    from caldicott.letters import render  # noqa: F401  (imported once per worker, not per letter)


def _render_group(work: list[tuple[tuple[Any, ...], str]], service: Service,
                  created: dt.datetime) -> list[bytes | Exception]:
    """Letters' PDFs, in the worker: the same :func:`caldicott.letters.render.render_pdf` as inline. A letter that
    fails to render ends the group with its exception in its place, so the letters before it in the group still go
    (as they would inline) and the error is raised where that letter would have been. Each letter arrives as the
    values of :data:`_FIELDS` (what a template reads), rebuilt here as a namespace that is a
    :class:`~caldicott.letters.render.LetterContent`."""
    from caldicott.letters.render import render_pdf

    out: list[bytes | Exception] = []
    for fields, kind in work:
        try:
            out.append(render_pdf(SimpleNamespace(**dict(zip(_FIELDS, fields, strict=True))), kind, service,
                                  created=created))
        except Exception as exc:
            out.append(exc)
            break
    return out


# ---- the sending side -----------------------------------------------------------------------------------------

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def _get_pool(size: int) -> ProcessPoolExecutor | None:
    """The process's render pool (started on first use); None when no worker process can be started here."""
    global _pool, _pool_size
    with _lock:
        if _pool is not None and _pool_size == size:
            return _pool
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None
        try:
            pool = ProcessPoolExecutor(max_workers=size, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(os.getpid(),))
            with _main_not_reimported():   # the workers start here, at the first submits
                warm = [pool.submit(_ready) for _ in range(size)]
            for fut in warm:
                fut.result(timeout=120)
        except (OSError, AssertionError, ValueError, RuntimeError, TimeoutError) as exc:
            # AssertionError: a daemonic process may not have children; BrokenProcessPool is a RuntimeError
            log.warning("letters render inline: no render worker process (%s)", type(exc).__name__)
            return None
        _pool, _pool_size = pool, size
        return pool


def _ready() -> bool:
    return True


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Start worker processes without re-running the ``__main__`` module in them.

    Why: ``spawn`` re-imports the parent's main module in each worker (so functions defined there can be
    unpickled). Here that is the Airflow CLI or the task runner (seconds of imports, for nothing: the worker runs
    only :mod:`caldicott.letters.render`), or a script without a ``__main__`` guard, which would run again.
    Without ``__spec__`` and ``__file__`` on ``__main__`` (as in an interactive session) multiprocessing skips
    that step; both are put back as soon as the workers have started."""
    main = sys.modules.get("__main__")
    missing = object()
    saved = {k: getattr(main, k, missing) for k in ("__spec__", "__file__")}
    try:
        if main is not None:
            main.__spec__ = None
            if saved["__file__"] is not missing:
                del main.__file__
        yield
    finally:
        if main is not None:
            for k, v in saved.items():
                if v is not missing:
                    setattr(main, k, v)


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool, so the next batch (a retry) starts a fresh worker."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


@atexit.register
def shutdown() -> None:
    """Stop the render worker (at exit; tests and the bench may call it to measure a cold start)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def worker_pids() -> list[int]:
    """Process ids of the live render workers (the bench counts their CPU; tests kill one)."""
    with _lock:
        pool = _pool
    procs = getattr(pool, "_processes", None) or {}
    return [p.pid for p in list(procs.values()) if p.pid is not None]


def render_pdfs(jobs: Iterable[tuple[LetterData, str]], service: Service, *, count: int | None = None
                ) -> Generator[tuple[bytes, dt.datetime], None, None]:
    """``(pdf, created)`` for each ``(letter, recipient_kind)`` of ``jobs``, in order; ``created`` is the PDF's
    creation date (when its rendering was asked for). ``count`` (the number of jobs, if known) decides whether
    the worker pool is worth using (:func:`min_letters`)."""
    size = processes()
    pool = _get_pool(size) if size and (count is None or count >= min_letters()) else None
    if pool is None:
        yield from _inline(jobs, service)
        return
    yield from _pooled(pool, jobs, service)


def _inline(jobs: Iterable[tuple[LetterData, str]], service: Service) -> Iterator[tuple[bytes, dt.datetime]]:
    from caldicott.letters.render import render_pdf

    for letter, kind in jobs:
        created = dt.datetime.now(dt.UTC)
        yield render_pdf(letter, kind, service, created=created), created


def _pooled(pool: ProcessPoolExecutor, jobs: Iterable[tuple[LetterData, str]],
            service: Service) -> Iterator[tuple[bytes, dt.datetime]]:
    """Letters go to the worker :data:`GROUP` at a time (one task, one result message for the group): a task per
    letter cost the sending process about a quarter of a letter's rendering in pickling and executor threads."""
    pending: deque[tuple[Future[list[bytes | Exception]], list[dt.datetime]]] = deque()
    source = iter(jobs)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) * GROUP < WINDOW:
                group = list(itertools.islice(source, GROUP))
                if not group:
                    exhausted = True
                    break
                created = [dt.datetime.now(dt.UTC)] * len(group)
                work = [(tuple(getattr(letter, f) for f in _FIELDS), kind) for letter, kind in group]
                try:
                    fut = pool.submit(_render_group, work, service, created[0])
                except (BrokenProcessPool, RuntimeError) as exc:
                    _discard_pool(pool)
                    raise RenderWorkerLost("the letters' render worker process is gone; letters not yet "
                                           "released stay intended for the retry") from exc
                pending.append((fut, created))
            if not pending:
                return
            fut, created = pending.popleft()
            try:
                pdfs = fut.result()
            except BrokenProcessPool as exc:
                _discard_pool(pool)
                raise RenderWorkerLost("the letters' render worker process died mid-batch; letters not yet "
                                       "released stay intended for the retry") from exc
            for pdf, at in zip(pdfs, created, strict=False):
                if isinstance(pdf, BaseException):
                    raise pdf
                yield pdf, at
    finally:
        for fut, _ in pending:   # the consumer stopped (an error, or it had enough): drop what is queued
            fut.cancel()


__all__ = ["MIN_LETTERS", "WINDOW", "RenderWorkerLost", "min_letters", "processes", "render_pdfs", "shutdown",
           "worker_pids"]

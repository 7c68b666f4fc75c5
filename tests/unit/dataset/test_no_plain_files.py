"""No plain patient data on disk: the archive is made in memory and only ciphertext is written; a write that fails
half-way leaves nothing (``finally``); what a killed run left (a ``.part``, the old code's temporary SQLite folder)
is swept by the next run. (A real SIGKILL mid-write: tests/reliability/test_dataset_submission_kills.py.)"""

from __future__ import annotations

import errno
import os
import tempfile

import pytest
from caldicott.dataset import builder, pipeline, writer
from caldicott.dataset.builder import Period, read_source
from caldicott.dataset.writer import MAGIC, load_key, new_key


def build(*args, **kw):
    """The builder with the test provider's ODS code (OrgIDProv has no default)."""
    return builder.build(*args, **{"org_provider": "ZZZ01", **kw})

SEPT = Period.month(2026, 9)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_a_failed_write_leaves_nothing(synth_source, tmp_path, monkeypatch, private_tmp):
    ds = build(read_source(synth_source.engine, SEPT), SEPT)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))
    out = tmp_path / "work"
    with pytest.raises(OSError):
        writer.write(ds, out, load_key(new_key()))
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert list(out.iterdir()) == [] and list(private_tmp.iterdir()) == []


def test_the_next_run_sweeps_what_a_killed_one_left(synth_source, state_engine, tmp_path, private_tmp):
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=load_key(new_key()))
    month = s.month_dir(SEPT)
    month.mkdir(parents=True)
    (month / "iapt_2026-09_v2.1.zip.enc.part").write_bytes(MAGIC + b"half an archive")
    legacy = private_tmp / "caldicott-ids-x1y2"            # the old intermediate.sqlite folder, in clear
    legacy.mkdir()
    (legacy / "intermediate.sqlite").write_bytes(b"SQLite format 3\x00...")
    pipeline.build_validate_write(synth_source.engine, state_engine, SEPT, s)
    assert not list(month.glob("*.part")) and not legacy.exists()
    assert list(private_tmp.iterdir()) == []               # and the build made no temporary file of its own
    for f in month.iterdir():
        if f.suffix == ".enc":
            assert f.read_bytes().startswith(MAGIC)

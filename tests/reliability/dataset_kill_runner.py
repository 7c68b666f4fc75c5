"""A runner zygote (``runner.py``'s, unchanged) that also knows the monthly data set's submission flows.

``python tests/reliability/dataset_kill_runner.py --serve``: imports ``runner`` from this folder, adds two flow
steps to its ``FLOWS`` and serves jobs exactly as ``runner.py --serve`` does, with the same kill points (the
``Killer`` sender wrapper, the ledger kill points, SIGKILL). Used by ``test_dataset_submission_kills.py``; kept out of
``runner.py`` so that file stays as its owners shape it.

``submission``: send one submission (a period's primary or refresh) by the staged, MESH or SFTP route, through the
same :func:`caldicott.dataset.submit.submit` the DAG's ``stage_submission`` calls, then record an automatic route's
transport reference as ``record_submission`` does. ``submission_build``: build a submission, killed half-way through
the archive's write when the job says so, with the process's temporary folder set to the job's (so the test can
see that nothing, in clear or not, was left there).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import runner


def _sender(job: dict):
    route = job["route"]
    if route == "staged":
        from caldicott.transport.staging import StagingSender

        return StagingSender(Path(job["staging"]))
    if route == "mesh":
        from caldicott.transport.mesh import MeshSender, MeshSettings

        return MeshSender.connect(MeshSettings(**job["mesh"]), job["config"]["mesh_workflow"])
    from caldicott.transport.sftp import SftpSender, paramiko_connector

    s = job["sftp"]
    conn = paramiko_connector("127.0.0.1", s["port"], s["username"], host_key=s["host_key"], password=s["password"],
                              timeout=10)
    return SftpSender(conn, peer="data set intermediary", create_dirs=True)


def run_submission(job: dict) -> dict:
    from caldicott.dataset.builder import Period
    from caldicott.dataset.submit import record_automatic, resolve_target, submit
    from caldicott.db import make_engine

    state = make_engine(job["state_url"])
    period = Period.month(*(int(x) for x in job["month"].split("-")))
    target = resolve_target(job["route"], job.get("config"), submitter="named-submitter")
    sender = runner._wrap(job.get("kill"))(_sender(job))
    try:
        result = submit(state, period, target, sender, job["kind"])
    finally:
        close = getattr(sender, "close", None)
        if close is not None:
            close()
    if result["automatic"] and (result["sent"] or result["already_sent"]):
        result["recorded"] = record_automatic(state, period, result, job["kind"])["reference"]
    return result


def run_submission_build(job: dict) -> dict:
    from caldicott.dataset import pipeline, writer
    from caldicott.dataset.builder import Period
    from caldicott.db import make_engine

    tempfile.tempdir = job["tmp"]
    if (job.get("kill") or {}).get("at") == "mid_archive":   # half the encrypted archive's .part written, SIGKILL
        writer.os = runner._os_with(fdopen=runner.half_file_fdopen(os.fdopen))
    records = make_engine(job["records_url"], readonly=True)
    state = make_engine(job["state_url"])
    period = Period.month(*(int(x) for x in job["month"].split("-")))
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=Path(job["work_dir"]), key=bytes.fromhex(job["key_hex"]))
    built = pipeline.build_validate_write(records, state, period, s, job["kind"])
    return {"state": built["state"], "rebuilt": built["rebuilt"], "kind": built["kind"]}


runner.FLOWS.update(submission=run_submission, submission_build=run_submission_build)


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        raise SystemExit("usage: dataset_kill_runner.py --serve")
    runner.preload()
    from caldicott.dataset import submit  # noqa: F401
    from caldicott.transport import mesh, sftp, staging  # noqa: F401

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    raise SystemExit(runner.serve())

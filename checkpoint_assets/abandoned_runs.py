"""Runs whose process was killed: find them and mark them failed.

``checkpoint-assets migrate`` executes its runs in its own processes. If such a process is
killed (SIGKILL, an OOM kill, a closed laptop), Dagster never hears of it: the run stays
STARTED for ever and its batch partition shows as in progress, so "backfill failed and
missing partitions" would skip it. PostgreSQL has already rolled the batch's transaction
back (the connection died with the process), so the partition holds nothing. Every run the
CLI starts carries PROCESS_TAG (host, pid, process start time); the next ``migrate`` or
``backfill`` on the same host marks the runs whose process is gone as failed, which makes
their partitions FAILED and picks them up.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg

from checkpoint_assets.partitions import PROCESS_TAG

_UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def process_tag() -> dict[str, str]:
    """The PROCESS_TAG identifying the calling process (add it to a run's tags)."""
    return {PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"}


def fail_abandoned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed every unfinished run of this host whose process no longer exists.

    Returns the run ids marked. Runs started on another host, or by ``dagster dev`` (no
    PROCESS_TAG), are left alone: their process cannot be checked from here.
    """
    host = socket.gethostname()
    marked = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=_UNFINISHED)):
        run = record.dagster_run
        tag_host, _, rest = run.tags.get(PROCESS_TAG, "").partition(":")
        if tag_host != host or not rest:
            continue
        pid, _, started = rest.partition(":")
        if _alive(int(pid), started):
            continue
        instance.report_run_failed(
            run, message=f"The process that ran this run (pid {pid} on {host}) no longer "
                         "exists: it was killed. PostgreSQL rolled its transaction back; the "
                         "partition is failed so that a backfill loads it again.")
        marked.append(run.run_id)
    return marked


def _alive(pid: int, started: str) -> bool:
    """A process with this pid exists and (where /proc tells) started when the tag says."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _start_time(pid)
    return not (now and started and started != "None" and now != started)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), else None; with the pid,
    it tells a process apart from a later one that reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]

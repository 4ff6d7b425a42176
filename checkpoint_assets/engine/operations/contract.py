"""What every operation shares: the contract values adapters show or follow (CONTRACT),
the progress and say callbacks, secrets kept out of text, private files, and the evidence
report written beside an export.

Adapters (the CLI, the Dagster layer) import from here and from the operation modules
beside it (migration, live, way_back); see checkpoint_assets/engine/__init__.py for the
rule on what else they may import.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpoint_assets.engine.core.batches import DEFAULT_BATCH_SIZE
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import FailureKind, MigrationError, failure_kind
from checkpoint_assets.engine.core.interrupts import (
    EXIT_INTERRUPTED,
    stop_on_ctrl_c,
    stop_requested,
)
from checkpoint_assets.engine.core.private_files import (
    write_private_json as _write_private_json,
)
from checkpoint_assets.engine.core.private_files import write_private_text
from checkpoint_assets.engine.core.workers import (
    PARALLEL_MIN_BATCHES,
    WorkerPool,
    default_workers,
    kill_workers,
    process_pool,
)
from checkpoint_assets.engine.load.target import Target, scrub
from checkpoint_assets.engine.rollback.way_back import ROLLBACK_EXPORT_SUFFIX
from checkpoint_assets.engine.sync.export_chain import ExportChain
from checkpoint_assets.engine.sync.refusals import MASS_DELETION_MIN_THREADS, MASS_DELETION_SHARE
from checkpoint_assets.engine.sync.sync_target import with_live_migration_section
from checkpoint_assets.engine.verify.evidence import (
    EVIDENCE_SUFFIX,
    default_evidence_path,
    render_evidence,
)
from checkpoint_assets.engine.verify.evidence import check_status as _check_status
from checkpoint_assets.engine.verify.evidence import every_mismatch as _every_mismatch
from checkpoint_assets.engine.verify.migration import DEFAULT_READBACK_SAMPLE

if TYPE_CHECKING:  # annotations only: the verification's report type
    from checkpoint_assets.engine.verify.reports import VerificationReport



# A progress reporter: ``progress(label, total)`` is a context manager yielding
# ``advance(n)`` (the CLI's bar; None: no progress shown).
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
Say = Callable[[str], None]

@dataclass(frozen=True)
class Contract:
    """Values the engine fixes and its adapters show or follow: the defaults of flags and
    resources, the names of files beside an export, the exit status of a Ctrl-C."""

    batch_size: int  # checkpoints per batch
    readback_threads: int  # threads read back through both savers by default
    parallel_min_batches: int  # batches from which import and verify use two processes
    mass_deletion_min_threads: int  # a sync losing this many threads ...
    mass_deletion_share: float  # ... and this share of them is refused by default
    evidence_suffix: str  # <export><suffix>: the evidence report beside an export
    rollback_export_suffix: str  # <sqlite file><suffix>: the way back's export
    exit_interrupted: int  # the status a command stopped by Ctrl-C exits with


CONTRACT = Contract(
    batch_size=DEFAULT_BATCH_SIZE, readback_threads=DEFAULT_READBACK_SAMPLE,
    parallel_min_batches=PARALLEL_MIN_BATCHES,
    mass_deletion_min_threads=MASS_DELETION_MIN_THREADS,
    mass_deletion_share=MASS_DELETION_SHARE, evidence_suffix=EVIDENCE_SUFFIX,
    rollback_export_suffix=ROLLBACK_EXPORT_SUFFIX, exit_interrupted=EXIT_INTERRUPTED)


@contextmanager
def stopping_on_ctrl_c(at_once_message: str) -> Iterator[None]:
    """The block stops on Ctrl-C (KeyboardInterrupt, workers stopped with it); a second
    Ctrl-C kills the workers, says ``at_once_message`` and exits at once."""
    with stop_on_ctrl_c(kill_workers, at_once_message):
        yield


def stop_was_requested() -> bool:
    """True once the user pressed Ctrl-C inside :func:`stopping_on_ctrl_c`."""
    return stop_requested()


def workers_by_default() -> int:
    """Processes that load batches at once by default: one per core, at most two."""
    return default_workers()


@contextmanager
def worker_processes(workers: int) -> Iterator[WorkerPool]:
    """A pool of ``workers`` spawned processes (``map`` like an executor's), stopped with
    the block; a Ctrl-C inside :func:`stopping_on_ctrl_c` stops them too."""
    with process_pool(workers) as pool:
        yield pool


def failure_kind_of(error: BaseException) -> FailureKind:
    """What kind of failure ``error`` is (conflict, transient, bad input, mismatch,
    interrupted, unexpected): what the adapters' retries and exit statuses follow."""
    return failure_kind(error)


def without_secrets(text: str, dsn: str | None) -> str:
    """``text`` without the DSN's password, any ``password=`` setting or URL password."""
    return scrub(text, dsn or "")


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, owner-only (settings files hold a DSN's password)."""
    write_private_text(path, text)

# What the evidence leaves to its reader: where to find more.
EVIDENCE_UNTIMED_HINT = ("`checkpoint-assets migrate` and the `migration_verification` "
                         "asset include the load time of every batch.")
EVIDENCE_MORE_HINT = ("see the JSON report (`checkpoint-assets verify --report FILE.json` "
                      "lists every one)")


def cipher_for(aes_key: str | None) -> Cipher | None:
    """The cipher of an AES key given as text (None: no encryption)."""
    return Cipher(aes_key.encode()) if aes_key else None


def check_status(check: Any) -> str:
    """PASS, FAIL or WARN: how a report shows one check's outcome."""
    return _check_status(check)


def every_mismatch(report: VerificationReport, name: str) -> list[dict]:
    """Every mismatch of check ``name`` that ``report`` holds, by key."""
    return _every_mismatch(report, name)


def write_private_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path``, owner-only (reports name threads)."""
    _write_private_json(path, data)


def progress_for(progress: Progress | None, label: str,
                 total: int) -> AbstractContextManager[Callable[[int], None] | None]:
    """The progress bar of ``label`` (a no-op without a reporter)."""
    return progress(label, total) if progress is not None else nullcontext(None)




def evidence_beside(export_path: Path) -> Path:
    """Where an evidence report goes by default: ``<export>.evidence.md`` beside it."""
    return default_evidence_path(export_path)


def chain_evidence(report: VerificationReport, chain: ExportChain, target: Target,
                   deletions_kept: list[str] | None,
                   cutover: dict[str, str] | None = None) -> str:
    """The evidence report; with a section on the syncs and the selection when there are."""
    markdown = render_evidence(report, manifest=chain.export, target_display=target.display,
                               untimed_hint=EVIDENCE_UNTIMED_HINT,
                               more_hint=EVIDENCE_MORE_HINT)
    return with_live_migration_section(markdown, chain, deletions_kept=deletions_kept,
                                       cutover=cutover)


def write_evidence(path: Path, markdown: str) -> Path:
    """Write an evidence report, owner-only (it names threads and metadata values)."""
    try:
        write_private_text(path, markdown)
    except OSError as exc:
        raise MigrationError(f"Cannot write the evidence report {path}: "
                             f"{exc.strerror or exc}.",
                             "Pass --evidence FILE.md in a writable directory.") from None
    return path



def clock(seconds: float) -> str:
    """A ``time.time()`` as a UTC ISO 8601 time with milliseconds."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")



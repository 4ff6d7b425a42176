"""Exit statuses of the command line and how an error of each kind is reported."""

from __future__ import annotations

from checkpoint_assets.engine.core.errors import FailureKind, MissingTablesError
from checkpoint_assets.engine.operations.contract import CONTRACT
from checkpoint_assets.settings import (
    TARGET_DSN_ENV,
    TARGET_SCHEMA_ENV,
)

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_CONFLICT = 0, 1, 2, 3, 4

EXIT_TIMED_OUT = 5  # cutover --timeout passed before the source was quiet
EXIT_INTERRUPTED = CONTRACT.exit_interrupted  # 130: stopped by Ctrl-C

# How main() reports an error of each kind: the label before its message, the exit status.
ERROR_REPORTS = {
    FailureKind.INTERRUPTED: ("INTERRUPTED", EXIT_INTERRUPTED),
    FailureKind.CONFLICT: ("CONFLICT", EXIT_CONFLICT),
    FailureKind.TIMED_OUT: ("TIMED OUT", EXIT_TIMED_OUT),
}

DEFAULT_ERROR_REPORT = ("ERROR", EXIT_BAD_INPUT)

ERROR_HINTS = {
    MissingTablesError: "Run checkpoint-assets import (or migrate) first, or point --target "
                        f"and --schema ({TARGET_DSN_ENV}, {TARGET_SCHEMA_ENV}) at the "
                        "database and schema the checkpoints were imported into.",
}

STOPPED = ("Stopped (Ctrl-C) before the command finished. Every batch in the target is whole "
           "(a batch being loaded was rolled back).\n  What to do: run the command again.")

STOPPED_AT_ONCE = ("\nINTERRUPTED: stopped at once (second Ctrl-C). Every batch in the target "
                   "is whole (batches being loaded were rolled back).\n  What to do: "
                   "`checkpoint-assets backfill` (after migrate) or the same `import` again "
                   "loads the rest; runs left in progress are marked failed by the next "
                   "migrate or backfill.\n")

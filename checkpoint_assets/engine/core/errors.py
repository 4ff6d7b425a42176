"""The project's exceptions for problems a user can cause and fix, and the kinds of failure.

MigrationError is the base type (its subclasses say more); every failure a command reports
has a FailureKind, carried from the step that failed to the exit status.
"""

from __future__ import annotations

from enum import Enum


class FailureKind(str, Enum):
    """What kind of failure stopped a step, a batch or a command."""

    CONFLICT = "conflict"  # the target holds rows with the same keys, other content
    TRANSIENT = "transient"  # the database went away or aborted; retrying may succeed
    BAD_INPUT = "bad input"  # input or environment: the message says what to fix
    MISMATCH = "mismatch"  # it ran, and a check found the target differs from the export
    INTERRUPTED = "interrupted"  # the user stopped it (Ctrl-C)
    TIMED_OUT = "timed out"  # it waited as long as it was allowed to (cutover --timeout)
    UNEXPECTED = "unexpected"  # not a MigrationError: a bug or an unforeseen error


class MigrationError(Exception):
    """Something about the input or the environment prevents a safe migration.

    The message says what is wrong; ``hint`` says what to do about it. Nothing has been
    written to the target when this is raised by a loading step.
    """

    kind = FailureKind.BAD_INPUT

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}\n  What to do: {hint}" if hint else problem)

    def __reduce__(self) -> tuple:
        # Keeps problem and hint apart when the error crosses a process boundary.
        return (self.__class__, (self.problem, self.hint))


class ConflictError(MigrationError):
    """The target already holds rows with the same keys but different content."""

    kind = FailureKind.CONFLICT

    def __init__(self, problem: str, hint: str, keys: list[dict]) -> None:
        super().__init__(problem, hint)
        self.keys = keys

    def __reduce__(self) -> tuple:
        return (self.__class__, (self.problem, self.hint, self.keys))


class Interrupted(MigrationError):
    """The user stopped the command (Ctrl-C); what was written is whole, and how to go on."""

    kind = FailureKind.INTERRUPTED


class MissingTablesError(MigrationError):
    """The target has no PostgresSaver tables to verify against."""


class TimedOut(MigrationError):
    """A wait ran out of the time it was given (the cutover's wait for quiet); what was
    done before is whole, and what to do."""

    kind = FailureKind.TIMED_OUT


def failure_kind(exc: BaseException) -> FailureKind:
    """The kind of failure ``exc`` stands for."""
    if isinstance(exc, MigrationError):
        return exc.kind
    if isinstance(exc, KeyboardInterrupt):
        return FailureKind.INTERRUPTED
    return FailureKind.UNEXPECTED

"""The one exception type for problems a user can cause and fix."""

from __future__ import annotations


class MigrationError(Exception):
    """Something about the input or the environment prevents a safe migration.

    The message says what is wrong; ``hint`` says what to do about it. Nothing has been
    written to the target when this is raised by a loading step.
    """

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}\n  What to do: {hint}" if hint else problem)

    def __reduce__(self) -> tuple:
        # Keeps problem and hint apart when the error crosses a process boundary.
        return (self.__class__, (self.problem, self.hint))


class ConflictError(MigrationError):
    """The target already holds rows with the same keys but different content."""

    def __init__(self, problem: str, hint: str, keys: list[dict]) -> None:
        super().__init__(problem, hint)
        self.keys = keys

    def __reduce__(self) -> tuple:
        return (self.__class__, (self.problem, self.hint, self.keys))


class Interrupted(MigrationError):
    """The user stopped the command (Ctrl-C); what was written is whole, and how to go on."""

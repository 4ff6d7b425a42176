"""Settings: every variable read in one place, a bad value named the same way wherever."""

from __future__ import annotations

import pytest

from checkpoint_assets.engine.errors import MigrationError
from checkpoint_assets.settings import WORKERS_ENV, Settings


def test_a_worker_count_that_is_not_a_number_is_named_in_the_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CHECKPOINT_ASSETS_WORKERS=two (read by the Dagster assets, where no CLI checks it):
    a MigrationError naming the variable and its value, not a Python traceback."""
    monkeypatch.setenv(WORKERS_ENV, "two")
    with pytest.raises(MigrationError, match="CHECKPOINT_ASSETS_WORKERS='two' is not a whole"):
        Settings.from_env()

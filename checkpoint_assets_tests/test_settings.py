"""Settings: every variable read in one place, a bad value named the same way wherever."""

from __future__ import annotations

import pytest

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.settings import VERIFY_EVERY_BATCH_ENV, WORKERS_ENV, Settings


def test_a_worker_count_that_is_not_a_number_is_named_in_the_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CHECKPOINT_ASSETS_WORKERS=two (read by the Dagster assets, where no CLI checks it):
    a MigrationError naming the variable and its value, not a Python traceback."""
    monkeypatch.setenv(WORKERS_ENV, "two")
    with pytest.raises(MigrationError, match="CHECKPOINT_ASSETS_WORKERS='two' is not a whole"):
        Settings.from_env()


@pytest.mark.parametrize(("value", "on"), [("1", True), ("yes", True), (" On ", True),
                                           ("0", False), ("false", False), ("", False)])
def test_verify_every_batch_is_a_switch(monkeypatch: pytest.MonkeyPatch, value: str,
                                        on: bool) -> None:
    """CHECKPOINT_ASSETS_VERIFY_EVERY_BATCH reads 1/true/yes/on and 0/false/no/off (unset
    or empty: off)."""
    monkeypatch.setenv(VERIFY_EVERY_BATCH_ENV, value)
    assert Settings.from_env().verify_every_batch is on


def test_a_verify_every_batch_that_is_no_switch_is_named_in_the_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CHECKPOINT_ASSETS_VERIFY_EVERY_BATCH=always: a MigrationError naming the variable,
    its value and what to set, before anything runs."""
    monkeypatch.setenv(VERIFY_EVERY_BATCH_ENV, "always")
    with pytest.raises(MigrationError, match="VERIFY_EVERY_BATCH='always' is neither on nor "
                                             "off") as raised:
        Settings.from_env()
    assert "Set it to 1 or 0" in raised.value.hint

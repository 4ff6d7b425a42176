"""Fidelity under application evolution: a value re-encoded at the same version.

The writers are real processes of an application that evolves (evolving_app.py): a second
entry point that cannot import the first one's pydantic class, a model that gains a field,
a dataclass that moves, and a validator that rewrites a value on load. Under test, through
the command line: the target holds what PostgresSaver would hold (the FIRST value of each
channel version), every later value is kept with its original bytes in this project's own
table and named by the verification (WARN for encoding only, ERROR for content), a paused
thread resumes alike on both savers, a sync and a cutover after the application evolved
pass, and the way back gives every checkpoint back byte for byte.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import ormsgpack
import psycopg
import pytest
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from psycopg import sql
from pydantic import BaseModel

from checkpoint_assets.engine.core.codec import pack_opaque, unpack_opaque
from checkpoint_assets.engine.core.rows import CheckpointRow
from checkpoint_assets.engine.core.versions import (
    CONTENT,
    ENCODING,
    FIELDS_ADDED,
    SUPERSEDED_TABLE,
    classify,
)
from checkpoint_assets.engine.rollback.reverse_convert import KEY_ORDER, difference_reason
from checkpoint_assets_tests.evolving_app import EvolvingApp
from checkpoint_assets_tests.test_cli import run

CHECKPOINTS = ("SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
               "checkpoint, metadata FROM checkpoints")


def build_evolved(app: EvolvingApp) -> None:
    """Threads written by v1 (and entry one), then by the application's later versions."""
    app.run("entry_one.py", "entry", "turn")
    app.run("shop", "field", "turn")
    app.run("shop", "moved", "turn")
    app.run("shop", "plain", "turn", "turn")
    evolve(app)


def evolve(app: EvolvingApp) -> None:
    """What the later versions write: each re-saves an unchanged value at its old version."""
    app.run("entry_two.py", "entry", "turn", "ask")  # ends paused on interrupt()
    app.version("v2")
    app.run("shop", "field", "turn")
    app.version("v2-moved")
    app.run("shop", "moved", "turn")
    app.version("v1")


@pytest.fixture(scope="module")
def evolved_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evolved database, written once for the module."""
    root = tmp_path_factory.mktemp("evolved")
    build_evolved(EvolvingApp(root / "app", root / "evolved.sqlite"))
    return root / "evolved.sqlite"


@pytest.fixture
def app(evolved_master: Path, tmp_path: Path) -> EvolvingApp:
    """The application, on a private copy of the evolved database."""
    database = Path(shutil.copyfile(evolved_master, tmp_path / "app.sqlite"))
    return EvolvingApp(tmp_path / "app", database)


def migrate(source: Path, dsn: str, work: Path, *extra: str) -> tuple[int, str]:
    """``checkpoint-assets migrate`` (every thread read back); (exit status, evidence)."""
    evidence = work / "evidence.md"
    done = run("migrate", "--source", str(source), "--export", str(work / "x.export"),
               "--target", dsn, "--readback-all", "--evidence", str(evidence), *extra,
               env={"DAGSTER_HOME": str(work / "home")})
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    return done.returncode, evidence.read_text()


def superseded_rows(dsn: str) -> list[tuple]:
    """(thread_id, checkpoint_id, channel, type, blob, difference) of every kept value
    (none while no load needed the table)."""
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass(%s)", (SUPERSEDED_TABLE,)).fetchone()[0] is None:
            return []
        return conn.execute(sql.SQL(
            "SELECT thread_id, checkpoint_id, channel, type, blob, difference FROM {} "
            "ORDER BY thread_id, checkpoint_id").format(sql.Identifier(SUPERSEDED_TABLE))
        ).fetchall()


def channel_bytes_in_sqlite(source: Path, checkpoint_id: str, channel: str) -> bytes:
    """The channel's value as it sits inside the SqliteSaver checkpoint blob (its msgpack
    bytes, decoded with every object left opaque, encoded again: byte-exact)."""
    with closing(sqlite3.connect(source)) as conn:
        (blob,) = conn.execute("SELECT checkpoint FROM checkpoints WHERE checkpoint_id = ?",
                               (checkpoint_id,)).fetchone()
    return pack_opaque(unpack_opaque(blob)["channel_values"][channel])


def section(evidence: str, check: str) -> str:
    """The evidence report's listing of one check's findings."""
    start = evidence.index(f": {check} (")
    end = evidence.find("\n## ", start)
    return evidence[start:end if end != -1 else None]


def test_an_evolved_database_migrates_with_every_reencoding_named(
        app: EvolvingApp, target_dsn: str, tmp_path: Path) -> None:
    """migrate exits 0; each later value is kept byte for byte and named (WARN), with the
    kind of difference; no content difference is claimed; the paused thread resumes on
    PostgresSaver exactly as on SqliteSaver, run by the entry point that paused it."""
    status, evidence = migrate(app.database, target_dsn, tmp_path)
    assert status == 0, evidence
    assert "warning: reencoded_at_same_version" in evidence
    kept = superseded_rows(target_dsn)
    kinds = {(thread, channel): kind for thread, _, channel, _, _, kind in kept}
    assert kinds == {("entry", "profile"): ENCODING, ("field", "profile"): FIELDS_ADDED,
                     ("moved", "address"): ENCODING}
    for thread, checkpoint_id, channel, type_, blob, _ in kept:
        assert type_ == "msgpack"
        assert bytes(blob) == channel_bytes_in_sqlite(app.database, checkpoint_id, channel)
    listing = section(evidence, "reencoded_at_same_version")
    for thread, checkpoint_id, *_ in kept:
        assert f"| {thread} |  | {checkpoint_id} |" in listing
    assert "__main__.Profile (pydantic v2) in the first, plain values (no class)" in listing
    assert "shop.models.Address (constructor) in the first, shop.places.Address" in listing
    assert "fields added: tier; every other field equal" in listing
    assert "| content_differs_at_same_version | PASS |" in evidence
    assert "| official_saver_readback | PASS |" in evidence
    assert "| content_integrity | PASS |" in evidence
    assert app.final_state("entry_two.py", "entry", "postgres", target_dsn) == \
        app.final_state("entry_two.py", "entry", "sqlite")


def test_a_content_difference_at_one_version_is_an_error_never_encoding_only(
        tmp_path: Path, target_dsn: str, admin_dsn: str) -> None:
    """A validator that rewrites the name on load re-saves a different value at the old
    version: migrate still loads it under PostgresSaver's rule but fails with the ERROR
    check naming the checkpoint and the field; --strict-versions refuses that thread and
    loads the others."""
    app = EvolvingApp(tmp_path / "app", tmp_path / "content.sqlite")
    app.run("shop", "shouted", "turn")
    app.run("shop", "calm", "turn")
    app.version("v3-validator")
    app.run("shop", "shouted", "turn")

    status, evidence = migrate(app.database, target_dsn, tmp_path / "default")
    assert status != 0
    assert "| content_differs_at_same_version | FAIL |" in evidence
    assert "| reencoded_at_same_version | PASS |" in evidence
    listing = section(evidence, "content_differs_at_same_version")
    assert "| shouted |" in listing and "| content | name: 'Ada" in listing
    assert "'ADA " in listing
    assert {kind for *_, kind in superseded_rows(target_dsn)} == {CONTENT}

    from checkpoint_assets.embedded_postgres import temporary_database
    with temporary_database(admin_dsn, "ca_test") as strict_dsn:
        status, evidence = migrate(app.database, strict_dsn, tmp_path / "strict",
                                   "--strict-versions")
        assert status != 0
        with psycopg.connect(strict_dsn) as conn:
            loaded = {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
        assert loaded == {"calm"}
        assert "refused (--strict-versions)" in evidence


def test_sync_and_cutover_after_the_application_evolved(
        tmp_path: Path, target_dsn: str) -> None:
    """Migrated while only v1 had written; then the later versions write: sync exits 0
    and moves the re-encoded checkpoints (their later values kept), cutover proves every
    thread equal and exits 0."""
    app = EvolvingApp(tmp_path / "app", tmp_path / "live.sqlite")
    app.run("entry_one.py", "entry", "turn")
    app.run("shop", "field", "turn")
    app.run("shop", "moved", "turn")
    status, evidence = migrate(app.database, target_dsn, tmp_path)
    assert status == 0, evidence
    assert superseded_rows(target_dsn) == []

    evolve(app)
    common = ["--source", str(app.database), "--export", str(tmp_path / "x.export"),
              "--target", target_dsn]
    synced = run("sync", *common)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    kinds = Counter(kind for *_, kind in superseded_rows(target_dsn))
    assert set(kinds) == {ENCODING, FIELDS_ADDED}
    again = run("sync", *common)
    assert again.returncode == 0 and "nothing was moved" in again.stdout, again.stdout

    cutover = run("cutover", *common, "--quiet-seconds", "0.2",
                  "--evidence", str(tmp_path / "cutover.md"))
    assert cutover.returncode == 0, cutover.stdout + cutover.stderr
    report = (tmp_path / "cutover.md").read_text()
    assert "| reencoded_at_same_version | WARN |" in report
    assert "| content_differs_at_same_version | PASS |" in report


def test_rollback_gives_every_checkpoint_back(app: EvolvingApp, target_dsn: str,
                                              tmp_path: Path) -> None:
    """The way back restores each checkpoint's own later value from the kept bytes: with
    the forward export every row is byte-identical to the original SQLite row; without it
    the only difference is the key order JSONB does not keep."""
    status, evidence = migrate(app.database, target_dsn, tmp_path)
    assert status == 0, evidence
    with closing(sqlite3.connect(app.database)) as conn:
        original = {r[:3]: CheckpointRow(*r) for r in conn.execute(CHECKPOINTS)}
    for name, extra in (("with-originals", ["--original-export", str(tmp_path / "x.export")]),
                        ("rebuilt", [])):
        back = tmp_path / f"{name}.sqlite"
        done = run("rollback", "--source-dsn", target_dsn, "--to", str(back),
                   "--readback-all", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        with closing(sqlite3.connect(back)) as conn:
            restored = {r[:3]: CheckpointRow(*r) for r in conn.execute(CHECKPOINTS)}
        assert restored.keys() == original.keys()
        reasons = Counter(difference_reason(original[k], restored[k], None) for k in original)
        if name == "with-originals":
            assert all(restored[k] == original[k] for k in original)
        else:
            assert set(reasons) == {KEY_ORDER}, reasons


class Profile(BaseModel):
    """A model as an application writes it (serialized by LangGraph's own serializer)."""

    name: str
    plan: str


@dataclass
class Address:
    """A dataclass as an application writes it."""

    city: str


def raw(value: object) -> object:
    """A value as LangGraph's serializer stores it, decoded with objects left opaque."""
    _, data = JsonPlusSerializer().dumps_typed(value)
    return unpack_opaque(data)


def moved(value: object, module: str) -> object:
    """``raw(value)`` as if its class lived in ``module``."""
    code_and_payload = raw(value)
    payload = unpack_opaque(code_and_payload.data)
    payload[0] = module
    return type(code_and_payload)(code_and_payload.code, ormsgpack.packb(payload))


@pytest.mark.parametrize(("first", "later", "kind"), [
    # an entry point without the class: LangGraph falls back to the model's fields
    (raw(Profile(name="Ada", plan="pro")), raw({"name": "Ada", "plan": "pro"}), ENCODING),
    # the same dataclass, moved to another module
    (raw(Address(city="Bern")), moved(Address(city="Bern"), "shop.places"), ENCODING),
    # a model that gained a field with a default
    (raw({"name": "Ada"}), raw({"name": "Ada", "tier": "free"}), FIELDS_ADDED),
    # a field value differs (also when one side lost its class)
    (raw(Profile(name="Ada", plan="pro")), raw({"name": "ADA", "plan": "pro"}), CONTENT),
    # a field is gone
    (raw({"name": "Ada", "plan": "pro"}), raw({"name": "Ada"}), CONTENT),
    # a field added AND one changed is content, never "fields added"
    (raw({"name": "Ada"}), raw({"name": "Bob", "tier": "free"}), CONTENT),
    # a list that grew
    (raw(["a"]), raw(["a", "b"]), CONTENT),
])
def test_what_differs_is_classified_by_content(first: object, later: object,
                                               kind: str) -> None:
    """classify() calls a difference encoding only when every field and value is the same
    once LangGraph's objects are replaced by their data, as LangGraph itself does."""
    assert classify(first, later)[0] == kind


def test_a_refused_thread_never_wedges_the_sync_chain(tmp_path: Path, target_dsn: str) -> None:
    """sync --strict-versions leaves out the thread whose content differs at one version,
    names it with what to do and exits 3, while the other thread's changes move; every
    later sync reads the refused thread again (no generation is replayed, nothing is stuck)
    and moves it once the source is fixed (here: the thread deleted in SQLite)."""
    app = EvolvingApp(tmp_path / "app", tmp_path / "live.sqlite")
    app.run("shop", "shouted", "turn")
    app.run("shop", "calm", "turn")
    status, evidence = migrate(app.database, target_dsn, tmp_path)
    assert status == 0, evidence
    common = ["--source", str(app.database), "--export", str(tmp_path / "x.export"),
              "--target", target_dsn, "--strict-versions"]

    def checkpoints_in_target(thread_id: str) -> int:
        with psycopg.connect(target_dsn) as conn:
            return conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s",
                                (thread_id,)).fetchone()[0]

    app.version("v3-validator")
    app.run("shop", "shouted", "turn")
    app.version("v1")
    app.run("shop", "calm", "turn")
    before = checkpoints_in_target("shouted")
    for attempt in range(2):
        if attempt:
            app.run("shop", "calm", "turn")
        done = run("sync", *common)
        assert done.returncode == 3, done.stdout + done.stderr
        assert "REFUSED thread 'shouted'" in done.stdout and "What to do:" in done.stdout
        assert "Traceback" not in done.stdout + done.stderr
        assert checkpoints_in_target("shouted") == before
        assert checkpoints_in_target("calm") == 4 * (attempt + 2)  # 4 a turn, all moved

    from langgraph.checkpoint.sqlite import SqliteSaver
    with SqliteSaver.from_conn_string(str(app.database)) as saver:
        saver.delete_thread("shouted")
    fixed = run("sync", *common, "--propagate-deletes")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert checkpoints_in_target("shouted") == 0


def test_two_batches_creating_the_superseded_table_at_once_both_succeed(
        target_dsn: str) -> None:
    """Two batch transactions that each need this project's table in a fresh target (two
    loaders, two batches with later values) create it one after the other: neither fails
    on PostgreSQL's catalog (CREATE TABLE IF NOT EXISTS alone races)."""
    import threading
    import time

    from checkpoint_assets.engine.load import superseded_table

    errors: list[BaseException] = []
    both_inside = threading.Barrier(2)

    def batch_transaction() -> None:
        try:
            with psycopg.connect(target_dsn) as conn:
                both_inside.wait()
                superseded_table.create_table(conn)
                time.sleep(0.3)  # hold the transaction open while the other one creates
        except BaseException as exc:  # noqa: BLE001 (collected and asserted below)
            errors.append(exc)

    workers = [threading.Thread(target=batch_transaction) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    with psycopg.connect(target_dsn) as conn:
        assert superseded_table.table_exists(conn)

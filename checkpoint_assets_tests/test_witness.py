"""The witness: migrated corpora behave on PostgresSaver exactly as on SqliteSaver.

Each corpus is written by real LangGraph graphs, migrated with the engine (export, import,
verify with read-back of every thread), and then compared at the graph level, which is
what the application sees: ``get_state`` (with subgraphs) and ``get_state_history`` for
every thread, and every paused thread resumed with the same ``Command(resume=...)`` on
both backends must end in the same state.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.types import StateSnapshot
from psycopg import Connection
from psycopg.rows import dict_row

from checkpoint_assets.engine.core.checkpoint_metadata import jsonb_metadata
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets_tests import corpus_graphs as cg

AES_KEY = b"0123456789abcdef0123456789abcdef"

CORPORA: dict[str, Callable[[Path], cg.CorpusInfo]] = {
    # every value kind and control-flow feature in one database
    "rich": cg.build_rich_corpus,
    # very old rows whose checkpoint type is json
    "json rows": cg.build_json_rows_corpus,
    # EncryptedSerializer (msgpack+aes): needs the key, stays encrypted
    "encrypted": lambda p: cg.build_encrypted_corpus(p, AES_KEY),
    # v3 checkpoints that carry pending_sends
    "v3 pending_sends": cg.build_v3_pending_sends_corpus,
    # saver versions before writes.task_path
    "no task_path": cg.build_legacy_no_task_path_corpus,
    # a realistic chat agent: tools, subgraph, interrupts
    "chat agent": lambda p: cg.build_scaled_corpus(p, threads=30),
}


@pytest.fixture(scope="module", params=list(CORPORA))
def corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> cg.CorpusInfo:
    """One corpus, written once per module."""
    path = tmp_path_factory.mktemp("witness") / "source.sqlite"
    return CORPORA[request.param](path)


def _cipher(corpus: cg.CorpusInfo) -> Cipher | None:
    return Cipher(AES_KEY) if corpus.serde is not None else None


@pytest.fixture
def migrated(corpus: cg.CorpusInfo, target_dsn: str, tmp_path: Path) -> tuple[cg.CorpusInfo, str]:
    """The corpus exported, imported and verified (all checks must pass)."""
    manifest = write_export(corpus.path, tmp_path / "x.export", batch_size=7)
    target = Target(target_dsn)
    import_export(manifest, target, cipher=_cipher(corpus))
    report = verify_migration(manifest, target, source_path=corpus.path,
                              cipher=_cipher(corpus), readback_threads=None)
    failed = {n: (c.mismatches[:3], c.notes) for n, c in report.checks.items() if not c.passed}
    assert report.passed, failed
    return corpus, target_dsn


def _pg_saver(conn: Connection, corpus: cg.CorpusInfo) -> PostgresSaver:
    return PostgresSaver(conn, serde=corpus.serde)  # type: ignore[arg-type]


def _pg_connection(dsn: str) -> Connection:
    return Connection.connect(dsn, autocommit=True, prepare_threshold=0, row_factory=dict_row)


def _snapshot(state: Any) -> Any:
    """The comparable content of a StateSnapshot (subgraph states included)."""
    # Metadata values JSONB cannot hold (NUL...) change in a documented, reported way;
    # configs carry metadata["parents"] as their checkpoint_map, so they change alike.
    def fitted(value: Any) -> Any:
        return jsonb_metadata(value)[0]

    return cg.canonical({
        "values": state.values, "next": state.next, "config": fitted(state.config),
        "metadata": fitted(state.metadata), "created_at": state.created_at,
        "parent_config": fitted(state.parent_config),
        "tasks": [(t.id, t.name, t.path, t.error, t.interrupts,
                   _snapshot(t.state) if isinstance(t.state, StateSnapshot) else t.state)
                  for t in state.tasks],
        "interrupts": state.interrupts,
    })


def test_graph_state_and_history_are_identical(migrated: tuple[cg.CorpusInfo, str]) -> None:
    """get_state(subgraphs=True) and the whole get_state_history match for every thread."""
    corpus, dsn = migrated
    with cg.open_sqlite_saver(corpus.path, serde=corpus.serde, read_only=True) as sqlite_saver, \
            _pg_connection(dsn) as pg_conn:
        on_sqlite = corpus.graph_factory(sqlite_saver)
        on_postgres = corpus.graph_factory(_pg_saver(pg_conn, corpus))
        for thread_id in corpus.thread_ids:
            config = cg.thread_config(thread_id)
            assert _snapshot(on_sqlite.get_state(config, subgraphs=True)) == \
                _snapshot(on_postgres.get_state(config, subgraphs=True)), thread_id
            history_sqlite = [_snapshot(s) for s in on_sqlite.get_state_history(config)]
            history_pg = [_snapshot(s) for s in on_postgres.get_state_history(config)]
            assert history_sqlite == history_pg, thread_id


def test_paused_threads_resume_identically(migrated: tuple[cg.CorpusInfo, str],
                                           tmp_path: Path) -> None:
    """Each paused thread, resumed with the same Command(resume=...), ends the same way."""
    corpus, dsn = migrated
    if not corpus.paused_threads:
        pytest.skip("this corpus has no paused thread")
    copy = tmp_path / "resume.sqlite"
    shutil.copyfile(corpus.path, copy)
    with cg.open_sqlite_saver(copy, serde=corpus.serde) as sqlite_saver, \
            _pg_connection(dsn) as pg_conn:
        on_sqlite = corpus.graph_factory(sqlite_saver)
        on_postgres = corpus.graph_factory(_pg_saver(pg_conn, corpus))
        for thread_id, resume in corpus.paused_threads.items():
            after_sqlite = cg.resume_paused_thread(on_sqlite, thread_id, resume)
            after_pg = cg.resume_paused_thread(on_postgres, thread_id, resume)
            assert cg.canonical(after_sqlite) == cg.canonical(after_pg), thread_id

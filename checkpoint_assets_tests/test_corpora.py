"""Tests of the test corpora: checkpoint_assets_tests.corpus_graphs and checkpoint_assets.sample.

Under test: every builder writes a SQLite database that the real `SqliteSaver`
reads back; the rich corpus really contains each feature it promises (subgraph
namespaces, interrupt/error/resume writes, DeltaChannel snapshots, NUL in nested
metadata, every value kind, forks and branches, odd thread ids); the legacy
corpora really have the old layouts (json rows, v3 pending_sends, no
task_path column, AES-encrypted rows); and every thread left paused on an
interrupt resumes to the end on SQLite.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.types import TASKS, _DeltaSnapshot

from checkpoint_assets.sample import SampleSummary, write_sample_database
from checkpoint_assets_tests import corpus_graphs as cg

AES_KEY = b"0123456789abcdef0123456789abcdef"
SCALED_THREADS = 24


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, cg.CorpusInfo]:
    """Every corpus, built once for this module (about one second in all)."""
    return cg.build_every_corpus(tmp_path_factory.mktemp("test-corpora"), AES_KEY,
                                 SCALED_THREADS)


@pytest.fixture(scope="module")
def rich(corpora: dict[str, cg.CorpusInfo]) -> cg.CorpusInfo:
    """The rich corpus."""
    return corpora["rich"]


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one read-only query on a corpus file."""
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


def ext_codes(blob: bytes) -> set[int]:
    """Every msgpack extension type code used anywhere inside `blob`."""
    codes: set[int] = set()

    def hook(code: int, data: bytes) -> None:
        codes.add(code)
        ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)

    ormsgpack.unpackb(blob, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
    return codes


def latest(info: cg.CorpusInfo, thread_id: str, ns: str = "") -> Any:
    """The newest checkpoint tuple of a thread, read by SqliteSaver."""
    with cg.open_sqlite_saver(info.path, serde=info.serde, read_only=True) as saver:
        return saver.get_tuple(cg.thread_config(thread_id, checkpoint_ns=ns))


# --- every corpus reads back ------------------------------------------------


@pytest.mark.parametrize("name", ["rich", "json", "encrypted", "v3", "legacy", "scaled"])
def test_every_row_reads_back_through_sqlite_saver(
    corpora: dict[str, cg.CorpusInfo], name: str
) -> None:
    info = corpora[name]
    with cg.open_sqlite_saver(info.path, serde=info.serde, read_only=True) as saver:
        tuples = list(saver.list(None))
    stored = query(info.path, "SELECT count(*) FROM checkpoints")[0][0]
    assert len(tuples) == stored > 0
    assert {t.config["configurable"]["thread_id"] for t in tuples} == set(info.thread_ids)
    assert all(t.checkpoint["id"] == t.config["configurable"]["checkpoint_id"] for t in tuples)
    assert set(info.paused_threads) <= set(info.thread_ids)


def test_sample_database_is_a_real_support_agent_run(tmp_path: Path) -> None:
    summary = write_sample_database(tmp_path / "nested" / "sample.sqlite", threads=6)
    path = summary.path
    assert summary == SampleSummary(
        path,
        6,
        query(path, "SELECT count(*) FROM checkpoints")[0][0],
        query(path, "SELECT count(*) FROM writes")[0][0],
    )
    assert query(path, "SELECT count(DISTINCT thread_id) FROM checkpoints")[0][0] == 6
    # triage subgraph checkpoints, paused refund approvals, tool calls
    assert query(path, "SELECT count(*) FROM checkpoints WHERE checkpoint_ns != ''")[0][0] > 0
    assert query(path, "SELECT count(*) FROM writes WHERE channel = '__interrupt__'")[0][0] == 2
    with cg.open_sqlite_saver(path, read_only=True) as saver:
        messages = saver.get_tuple(cg.thread_config("support-001")).checkpoint[
            "channel_values"
        ]["messages"]
    assert any(isinstance(m, AIMessage) and m.tool_calls for m in messages)
    assert any(isinstance(m, ToolMessage) for m in messages)
    with pytest.raises(FileExistsError):
        write_sample_database(path)


def test_sample_database_names_the_extra_when_langgraph_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import fail like an uninstalled package.
    monkeypatch.setitem(sys.modules, "langgraph.checkpoint.sqlite", None)
    with pytest.raises(RuntimeError, match=r"pip install 'checkpoint-assets\[sample\]'"):
        write_sample_database(tmp_path / "sample.sqlite")
    assert not (tmp_path / "sample.sqlite").exists()


# --- the rich corpus has every promised feature ------------------------------


def test_rich_corpus_has_subgraph_namespaces_and_special_writes(rich: cg.CorpusInfo) -> None:
    rows = query(rich.path, "SELECT DISTINCT checkpoint_ns FROM checkpoints")
    namespaces = {ns for (ns,) in rows}
    assert "" in namespaces and any(ns.startswith("review:") for ns in namespaces)
    special = Counter(
        (channel, ns != "")
        for channel, ns in query(
            rich.path,
            "SELECT channel, checkpoint_ns FROM writes WHERE channel LIKE '\\_\\_%' ESCAPE '\\'",
        )
    )
    assert special[("__interrupt__", False)] and special[("__interrupt__", True)]
    assert special[("__error__", False)] == 1
    assert special[("__resume__", False)] and special[("__resume__", True)]
    assert special[(TASKS, False)] == len(cg.FANOUT_ITEMS)
    error = latest(rich, "rich-error").pending_writes
    assert [(channel, "CRM timed out" in value) for _, channel, value in error] == [
        ("__error__", True)
    ]


def test_rich_corpus_keeps_every_value_kind(rich: cg.CorpusInfo) -> None:
    values = latest(rich, "rich-basic").checkpoint["channel_values"]
    assert isinstance(values["profile"], cg.CustomerProfile)
    assert isinstance(values["order"], cg.OrderRecord)
    assert values["priority"] is cg.Priority.URGENT
    assert isinstance(values["due_at"], datetime) and values["due_at"].tzinfo is not None
    assert values["tags"] == {"vip", "damaged", "多语言"}
    assert isinstance(values["attachment"], bytes) and b"\x00" in values["attachment"]
    assert values["note"] == cg.UNICODE_NOTE and "\x00" in values["note"]
    assert values["huge_float"] == 1e20 and isinstance(values["huge_float"], float)
    assert math.isnan(values["nan_float"]) and values["inf_float"] == math.inf
    assert math.copysign(1.0, values["negative_zero"]) == -1.0
    assert values["big_int"] == cg.BIG_INT
    human, ai, tool, _ = values["messages"]
    assert "\x00" in human.content and ai.tool_calls and isinstance(tool, ToolMessage)


def test_rich_corpus_has_delta_channel_snapshots(rich: cg.CorpusInfo) -> None:
    blobs = query(rich.path, "SELECT type, checkpoint FROM checkpoints")
    assert any(t == "msgpack" and 7 in ext_codes(blob) for t, blob in blobs)
    with cg.open_sqlite_saver(rich.path, read_only=True) as saver:
        tuples = list(saver.list(cg.thread_config("rich-basic")))
    snapshots = [
        t for t in tuples if isinstance(t.checkpoint["channel_values"].get("audit"), _DeltaSnapshot)
    ]
    assert snapshots and len(snapshots) < len(tuples)
    assert any("counters_since_delta_snapshot" in t.metadata for t in tuples)


def test_rich_corpus_has_nul_only_in_nested_metadata(rich: cg.CorpusInfo) -> None:
    nested_nul = 0
    for (raw,) in query(rich.path, "SELECT metadata FROM checkpoints"):
        metadata = json.loads(raw)
        assert not any(isinstance(v, str) and "\x00" in v for v in metadata.values())
        parents = metadata.get("parents", {})
        if any("\x00" in k or "\x00" in v for k, v in parents.items()):
            nested_nul += 1
    assert nested_nul > 0
    subgraph_meta = [
        json.loads(raw)
        for (raw,) in query(
            rich.path,
            "SELECT metadata FROM checkpoints "
            "WHERE thread_id = 'rich-nul-metadata' AND checkpoint_ns != ''",
        )
    ]
    assert any(m["parents"].get("crm-import") == "batch\x00row-7" for m in subgraph_meta)


def test_rich_corpus_has_forks_and_branches(rich: cg.CorpusInfo) -> None:
    rows = query(
        rich.path,
        "SELECT parent_checkpoint_id, metadata FROM checkpoints WHERE thread_id = 'rich-branches'",
    )
    sources = Counter(json.loads(meta)["source"] for _, meta in rows)
    assert sources["update"] == 1 and sources["fork"] == 1
    children = Counter(parent for parent, _ in rows if parent)
    assert sum(1 for n in children.values() if n > 1) == 2


def test_rich_fanout_has_finished_tasks_and_one_interrupt(rich: cg.CorpusInfo) -> None:
    writes = latest(rich, "rich-fanout").pending_writes
    by_task: dict[str, list[str]] = {}
    for task_id, channel, _ in writes:
        by_task.setdefault(task_id, []).append(channel)
    assert sorted(sorted(channels) for channels in by_task.values()) == [
        ["__interrupt__"],
        ["audit", "branch:to:respond", "results"],
        ["audit", "branch:to:respond", "results"],
    ]


def test_rich_corpus_has_odd_thread_ids(rich: cg.CorpusInfo) -> None:
    threads = {t for (t,) in query(rich.path, "SELECT DISTINCT thread_id FROM checkpoints")}
    assert {cg.UNICODE_THREAD_ID, cg.QUOTED_THREAD_ID} <= threads
    assert cg.UNICODE_THREAD_ID in rich.paused_threads


# --- the legacy layouts are really legacy -------------------------------------


def test_json_corpus_has_old_json_rows(corpora: dict[str, cg.CorpusInfo]) -> None:
    info = corpora["json"]
    types = Counter(t for (t,) in query(info.path, "SELECT type FROM checkpoints"))
    assert types["json"] > 0 and types["msgpack"] > 0
    rows = query(info.path, "SELECT checkpoint FROM checkpoints WHERE type = 'json'")
    channel_values = [json.loads(blob)["channel_values"] for (blob,) in rows]
    messages = [m for values in channel_values for m in values.get("messages", [])]
    # messages as lc-1 envelopes, sets and datetimes as lc-2 constructor envelopes
    assert messages and all(m["lc"] == 1 for m in messages)
    assert any(values.get("labels", {}).get("lc") == 2 for values in channel_values)
    assert any(values.get("opened_at", {}).get("lc") == 2 for values in channel_values)
    write_types = {t for (t,) in query(info.path, "SELECT DISTINCT type FROM writes")}
    assert "json" in write_types


def test_encrypted_corpus_needs_the_key(corpora: dict[str, cg.CorpusInfo]) -> None:
    info = corpora["encrypted"]
    checkpoint_types = {t for (t,) in query(info.path, "SELECT DISTINCT type FROM checkpoints")}
    write_types = {t for (t,) in query(info.path, "SELECT DISTINCT type FROM writes")}
    assert checkpoint_types == {"msgpack+aes"}
    assert all(t.endswith("+aes") for t in write_types), write_types
    # without the serializer the rows cannot be read at all
    with cg.open_sqlite_saver(info.path, read_only=True) as saver:
        with pytest.raises(NotImplementedError):
            list(saver.list(None))
    wrong_key = EncryptedSerializer.from_pycryptodome_aes(key=b"x" * 32)
    with cg.open_sqlite_saver(info.path, serde=wrong_key, read_only=True) as saver:
        with pytest.raises(ValueError, match="MAC check failed"):
            list(saver.list(None))
    assert latest(info, "enc-0").checkpoint["channel_values"]["summary"]


def test_v3_corpus_keeps_sends_in_pending_sends(corpora: dict[str, cg.CorpusInfo]) -> None:
    info = corpora["v3"]
    with cg.open_sqlite_saver(info.path, read_only=True) as saver:
        tuples = list(saver.list(None))
        with_sends = [t for t in tuples if t.checkpoint["pending_sends"]]
        assert all(t.checkpoint["v"] == 3 and "writes" in t.metadata for t in tuples)
        assert len(with_sends) == len(info.thread_ids)
        for t in with_sends:
            assert TASKS not in t.checkpoint["channel_values"]
            parent = saver.get_tuple(t.parent_config)
            sends = [v for _, channel, v in parent.pending_writes if channel == TASKS]
            assert sends == t.checkpoint["pending_sends"]
    with cg.open_sqlite_saver(info.path, read_only=True) as saver:
        state = info.graph_factory(saver).get_state(cg.thread_config("v3-paused"))
    assert state.next == ("handle",) and len(state.interrupts) == 1


def test_legacy_corpus_has_no_task_path_column(corpora: dict[str, cg.CorpusInfo]) -> None:
    info = corpora["legacy"]
    columns = [row[1] for row in query(info.path, "PRAGMA table_info(writes)")]
    assert "task_path" not in columns and "idx" in columns
    paused = next(iter(info.paused_threads))
    assert [w[1] for w in latest(info, paused).pending_writes] == ["__interrupt__"]


def test_scaled_corpus_shape_and_determinism(
    corpora: dict[str, cg.CorpusInfo], tmp_path: Path
) -> None:
    info = corpora["scaled"]
    checkpoints = query(info.path, "SELECT count(*), avg(length(checkpoint)) FROM checkpoints")[0]
    writes = query(info.path, "SELECT count(*) FROM writes")[0][0]
    assert checkpoints[0] / SCALED_THREADS >= 9 and writes / SCALED_THREADS >= 25
    assert checkpoints[1] > 1000
    assert 0 < len(info.paused_threads) < SCALED_THREADS
    again = cg.build_scaled_corpus(tmp_path / "again.sqlite", SCALED_THREADS)
    for thread_id in ("scaled-00000", "scaled-00007", "scaled-00013"):
        first = latest(info, thread_id).checkpoint["channel_values"]
        second = latest(again, thread_id).checkpoint["channel_values"]
        assert cg.canonical(first) == cg.canonical(second)


def test_canonical_tells_apart_what_equality_hides() -> None:
    assert cg.canonical({"x": math.nan}) == cg.canonical({"x": float("nan")})
    assert cg.canonical(-0.0) != cg.canonical(0.0)
    assert cg.canonical(cg.Priority.LOW) != cg.canonical("low")


# --- paused threads resume on SQLite ------------------------------------------


def paused_cases() -> list[tuple[str, int]]:
    """(corpus, index into its paused threads); counts match the builders."""
    counts = {"rich": 4, "json": 1, "encrypted": 2, "v3": 1, "legacy": 1, "scaled": 3}
    return [(name, i) for name, n in counts.items() for i in range(n)]


@pytest.mark.parametrize(("name", "index"), paused_cases())
def test_paused_thread_resumes_to_the_end(
    corpora: dict[str, cg.CorpusInfo], name: str, index: int, tmp_path: Path
) -> None:
    info = corpora[name]
    thread_id, resume_value = list(info.paused_threads.items())[index]
    copy = tmp_path / "copy.sqlite"
    shutil.copy(info.path, copy)
    with cg.open_sqlite_saver(copy, serde=info.serde) as saver:
        graph = info.graph_factory(saver)
        assert graph.get_state(cg.thread_config(thread_id)).interrupts
        final = cg.resume_paused_thread(graph, thread_id, resume_value)
        state = graph.get_state(cg.thread_config(thread_id))
    assert state.next == () and not state.interrupts
    assert cg.canonical(final) == cg.canonical(state.values)
    if name == "rich":
        expected = {
            "approve": lambda v: v["approval"] == resume_value,
            "review": lambda v: v["review"].startswith(resume_value["verdict"]),
            "fanout": lambda v: f"needs-approval: {resume_value}" in v["results"],
        }[final["scenario"]]
        assert expected(final)

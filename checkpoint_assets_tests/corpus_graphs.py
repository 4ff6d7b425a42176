"""Real LangGraph graphs that write the SQLite checkpoint corpora used by the tests.

Every database here is produced by running compiled LangGraph graphs on a real
`SqliteSaver`. Two builders then transform the rows the way an older library
version would have written them (`json` checkpoint rows, v3 `pending_sends`
checkpoints, a `writes` table without `task_path`); each of them checks that the
installed library still reads the result back.

The value classes (pydantic model, dataclass, str-Enum) live at module level on
purpose: the checkpoint serializer stores their module path and imports them
again on load, so they must be importable as
`checkpoint_assets_tests.corpus_graphs.<Name>`.

Content is deterministic; only LangGraph's own ids (checkpoint ids, task ids,
channel versions) and timestamps change from run to run.
"""

from __future__ import annotations

import json
import math
import operator
import random
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.load.serializable import Serializable
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import TASKS
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Send, interrupt
from pydantic import BaseModel

GraphFactory = Callable[[BaseCheckpointSaver], CompiledStateGraph]

# --------------------------------------------------------------------------
# Corpus description and small helpers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusInfo:
    """What a corpus builder wrote and how to work with it.

    Attributes:
        path: the SQLite file.
        graph_factory: builds the same compiled graph on any checkpointer
            (SqliteSaver, PostgresSaver, ...), e.g. to resume a paused thread.
        paused_threads: thread_id -> the value to pass as `Command(resume=...)`
            for every thread left paused on an `interrupt()`.
        thread_ids: every thread written, in the order they were written.
        serde: the serializer the rows were written with; None means the
            savers' default (`JsonPlusSerializer`).
    """

    path: Path
    graph_factory: GraphFactory
    paused_threads: dict[str, Any] = field(default_factory=dict)
    thread_ids: tuple[str, ...] = ()
    serde: SerializerProtocol | None = None


def thread_config(thread_id: str, **configurable: Any) -> dict[str, Any]:
    """Return the run config addressing `thread_id` (plus extra configurable keys)."""
    return {"configurable": {"thread_id": thread_id, **configurable}}


@contextmanager
def open_sqlite_saver(
    path: str | Path, *, serde: SerializerProtocol | None = None, read_only: bool = False
) -> Iterator[SqliteSaver]:
    """Open a `SqliteSaver` on `path`, closing the connection afterwards.

    With `read_only=True` the file is opened with `mode=ro`, which also keeps
    `SqliteSaver.setup` from adding a missing `task_path` column.
    """
    if read_only:
        conn = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False)
    with closing(conn):
        yield SqliteSaver(conn, serde=serde)


@contextmanager
def _new_corpus_saver(
    path: str | Path, serde: SerializerProtocol | None = None
) -> Iterator[SqliteSaver]:
    """Open a saver on a fresh file; refuse to add threads to an existing one."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; corpus builders need a new file")
    # check_same_thread=False: the saver is called from LangGraph's background
    # checkpoint thread. synchronous=OFF: a test corpus needs no fsync per put.
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA synchronous=OFF")
    with closing(conn):
        saver = SqliteSaver(conn, serde=serde)
        saver.setup()
        yield saver


def resume_paused_thread(
    graph: CompiledStateGraph, thread_id: str, resume_value: Any
) -> dict[str, Any]:
    """Resume a thread paused on `interrupt()` and return its final state values."""
    config = thread_config(thread_id)
    graph.invoke(Command(resume=resume_value), config)
    return dict(graph.get_state(config).values)


def canonical(value: Any) -> Any:
    """Return a form of `value` that compares equal exactly when the values match.

    Plain `==` is not enough for these corpora: NaN never equals itself, -0.0
    equals 0.0, an Enum equals its str value, and set order is arbitrary.
    """
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, Enum):
        return ("enum", type(value).__qualname__, canonical(value.value))
    if isinstance(value, BaseModel):
        return ("model", type(value).__qualname__, canonical(value.model_dump()))
    if is_dataclass(value) and not isinstance(value, type):
        return (
            "dataclass",
            type(value).__qualname__,
            {f.name: canonical(getattr(value, f.name)) for f in fields(value)},
        )
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return ("set", sorted((canonical(v) for v in value), key=repr))
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        # NamedTuples such as the DeltaChannel's `_DeltaSnapshot` keep their type.
        return ("namedtuple", type(value).__qualname__, [canonical(v) for v in value])
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


# --------------------------------------------------------------------------
# Value classes stored in checkpoints (must stay importable by module path)
# --------------------------------------------------------------------------


class Priority(str, Enum):
    """Ticket priority; a str-Enum, which msgpack stores with its class path."""

    LOW = "low"
    HIGH = "high"
    URGENT = "urgent"


class CustomerProfile(BaseModel):
    """A pydantic v2 model held directly in graph state."""

    customer_id: str
    display_name: str
    tier: str
    lifetime_value: float
    languages: list[str]


@dataclass
class OrderRecord:
    """A dataclass held directly in graph state."""

    order_id: str
    amount_cents: int
    currency: str
    items: list[str]


def append_batches(current: list[str], batches: Sequence[list[str]]) -> list[str]:
    """DeltaChannel reducer: append every batch in order (batching-invariant)."""
    return [*current, *(entry for batch in batches for entry in batch)]


# --------------------------------------------------------------------------
# The rich graph: one graph, one scenario per thread
# --------------------------------------------------------------------------

# Strings with the characters JSONB and naive encoders get wrong.
UNICODE_NOTE = (
    "NUL here:\x00end | emoji 🚀🧪👩‍💻 | RTL עברית العربية | CJK 漢字かなカナ한국어"
)
NUL_MESSAGE = "Order A-1001 arrived damaged\x00 please help 🙏 (طلب)"
UNICODE_THREAD_ID = "客户-🚀-عميل-שלום"
QUOTED_THREAD_ID = "ticket \"42\" o'brien \\ C:\\tmp\\x"
# A value only msgpack's uint64 can hold; LangGraph's msgpack refuses >= 2**64.
BIG_INT = 2**64 - 1
# Keys and values that land in metadata["parents"] (see build_rich_corpus).
NUL_CHECKPOINT_MAP = {"crm-import": "batch\x00row-7", "legacy\x00ns": "import-job"}
FANOUT_ITEMS = ("label-printer", "needs-approval", "restock")


class RichState(TypedDict, total=False):
    """State of the rich graph: one key per value kind the migration must keep."""

    scenario: str
    messages: Annotated[list[AnyMessage], add_messages]
    profile: CustomerProfile
    order: OrderRecord
    priority: Priority
    due_at: datetime
    tags: set[str]
    attachment: bytes
    note: str
    huge_float: float
    nan_float: float
    inf_float: float
    negative_zero: float
    big_int: int
    results: Annotated[list[str], operator.add]
    audit: Annotated[list[str], DeltaChannel(append_batches, snapshot_frequency=2)]
    approval: str
    review: str


class ReviewState(TypedDict, total=False):
    """State of the review subgraph (shares `messages` and `review` with the parent)."""

    messages: Annotated[list[AnyMessage], add_messages]
    review: str


class WorkerTask(TypedDict):
    """The argument of each `Send("worker", ...)`."""

    item: str


def _message_id(state: dict[str, Any], kind: str) -> str:
    """Deterministic message id: the message's position in the conversation."""
    return f"{kind}-{len(state.get('messages', []))}"


def rich_intake(state: RichState) -> dict[str, Any]:
    """Fill every typed state key and ask for a tool call."""
    return {
        "messages": [
            AIMessage(
                content="Let me look up that order — 注文を確認します。",
                id=_message_id(state, "ai"),
                tool_calls=[
                    {
                        "name": "lookup_order",
                        "args": {"order_id": "A-1001", "note": "fragile\x00"},
                        "id": "call_lookup_1",
                        "type": "tool_call",
                    }
                ],
            )
        ],
        "profile": CustomerProfile(
            customer_id="C-77",
            display_name="Zoë Ångström 🦊",
            tier="gold",
            lifetime_value=12345.67,
            languages=["en", "ar", "ja"],
        ),
        "order": OrderRecord(
            order_id="A-1001", amount_cents=129_99, currency="EUR", items=["lamp", "bulb"]
        ),
        "priority": Priority.URGENT,
        "due_at": datetime(2024, 3, 1, 9, 30, 15, 123456, tzinfo=timezone.utc),
        "tags": {"vip", "damaged", "多语言"},
        "attachment": b"%PDF-1.7\x00\x01\x02\xff\xfe",
        "big_int": BIG_INT,
        "audit": ["intake"],
        **_jsonb_hostile_primitives(state),
    }


def _jsonb_hostile_primitives(state: RichState) -> dict[str, Any]:
    """Top-level str/float values JSONB cannot hold (NUL, NaN, inf, -0.0, 1e20).

    Only `basic` threads get them. PostgresSaver.put inlines such primitives into its
    JSONB column, so a live PostgresSaver cannot save the *next* checkpoint of a thread
    holding them (a LangGraph limitation, reported by the verification); paused threads,
    which the tests resume on PostgreSQL, keep these characters inside messages instead.
    """
    if state.get("scenario") != "basic":
        return {"note": "plain note — emoji 🚀 RTL עברית CJK 漢字", "huge_float": 2.5}
    return {
        "note": UNICODE_NOTE,
        "huge_float": 1e20,
        "nan_float": math.nan,
        "inf_float": math.inf,
        "negative_zero": -0.0,
    }


def rich_tools(state: RichState) -> dict[str, Any]:
    """Answer every tool call of the last AI message with a ToolMessage."""
    last = state["messages"][-1]
    replies = [
        ToolMessage(
            content=json.dumps({"order": call["args"]["order_id"], "status": "shipped"}),
            tool_call_id=call["id"],
            name=call["name"],
            id=f"tool-{call['id']}",
        )
        for call in last.tool_calls
    ]
    return {"messages": replies, "audit": ["tools"]}


def rich_route_after_tools(state: RichState) -> str | list[Send]:
    """Pick the scenario's next step; `fanout` sends one task per item."""
    scenario = state["scenario"]
    if scenario == "fanout":
        return [Send("worker", {"item": item}) for item in FANOUT_ITEMS]
    return {
        "approve": "approval",
        "review": "review",
        "error": "flaky",
    }.get(scenario, "respond")


def rich_approval(state: RichState) -> dict[str, Any]:
    """Pause in the parent graph until a human approves the refund."""
    answer = interrupt(
        {"question": "Approve a refund of 129.99 EUR? ✅/❌", "order": "A-1001"}
    )
    return {"approval": str(answer), "audit": ["approval"]}


def rich_worker(task: WorkerTask) -> dict[str, Any]:
    """One fanned-out task; the `needs-approval` item pauses on an interrupt."""
    item = task["item"]
    outcome = "done"
    if item == "needs-approval":
        outcome = str(interrupt({"question": f"May I run {item}?"}))
    return {"results": [f"{item}: {outcome}"], "audit": [f"worker:{item}"]}


def rich_flaky(state: RichState) -> dict[str, Any]:
    """Fail the way an unreliable upstream call does."""
    raise ValueError("CRM timed out for order A-1001 (ошибка 504)")


def rich_respond(state: RichState) -> dict[str, Any]:
    """Write the final answer."""
    return {
        "messages": [
            AIMessage(
                content=f"Done: {state.get('approval') or state.get('review') or 'resolved'} 👍",
                id=_message_id(state, "ai"),
            )
        ],
        "audit": ["respond"],
    }


def review_check(state: ReviewState) -> dict[str, Any]:
    """Subgraph step 1: announce the escalation."""
    return {
        "messages": [
            AIMessage(content="Escalating to a reviewer / مراجع", id=_message_id(state, "ai"))
        ]
    }


def review_ask(state: ReviewState) -> dict[str, Any]:
    """Subgraph step 2: pause inside the subgraph for the reviewer's verdict."""
    decision = interrupt({"question": "Reviewer verdict?", "options": ["approve", "deny"]})
    return {"review": f"{decision['verdict']} ({decision['comment']})"}


def review_finalize(state: ReviewState) -> dict[str, Any]:
    """Subgraph step 3: record the verdict as a message."""
    return {
        "messages": [
            AIMessage(content=f"Reviewer said: {state['review']}", id=_message_id(state, "ai"))
        ]
    }


def build_review_subgraph() -> CompiledStateGraph:
    """Compile the review subgraph (it inherits the parent's checkpointer)."""
    builder = StateGraph(ReviewState)
    builder.add_node("check", review_check)
    builder.add_node("ask", review_ask)
    builder.add_node("finalize", review_finalize)
    builder.add_edge(START, "check")
    builder.add_edge("check", "ask")
    builder.add_edge("ask", "finalize")
    builder.add_edge("finalize", END)
    return builder.compile()


def build_rich_graph(checkpointer: BaseCheckpointSaver) -> CompiledStateGraph:
    """Compile the rich graph on `checkpointer`."""
    builder = StateGraph(RichState)
    builder.add_node("intake", rich_intake)
    builder.add_node("tools", rich_tools)
    builder.add_node("approval", rich_approval)
    builder.add_node("review", build_review_subgraph())
    builder.add_node("worker", rich_worker)
    builder.add_node("flaky", rich_flaky)
    builder.add_node("respond", rich_respond)
    builder.add_edge(START, "intake")
    builder.add_edge("intake", "tools")
    builder.add_conditional_edges(
        "tools", rich_route_after_tools, ["approval", "review", "worker", "flaky", "respond"]
    )
    for node in ("approval", "review", "worker"):
        builder.add_edge(node, "respond")
    builder.add_edge("respond", END)
    return builder.compile(checkpointer=checkpointer)


def rich_input(scenario: str) -> dict[str, Any]:
    """The first input of a rich-graph thread."""
    return {
        "scenario": scenario,
        "messages": [HumanMessage(content=NUL_MESSAGE, id="human-0")],
    }


RICH_RESUME_VALUES: dict[str, Any] = {
    "approve": "approved by supervisor ✅",
    "review": {"verdict": "approve", "comment": "looks fine — تمام"},
    "fanout": "yes, go ahead",
}


def _snapshot_before(graph: CompiledStateGraph, thread_id: str, node: str) -> Any:
    """The newest checkpoint of a thread whose next task is `node`."""
    for snapshot in graph.get_state_history(thread_config(thread_id)):
        if snapshot.next == (node,):
            return snapshot
    raise AssertionError(f"no checkpoint before {node!r} in thread {thread_id!r}")


def _write_branches(graph: CompiledStateGraph, thread_id: str) -> None:
    """Give a finished thread an update_state fork and a time-travel branch."""
    before_tools = _snapshot_before(graph, thread_id, "tools")
    before_respond = _snapshot_before(graph, thread_id, "respond")
    # Fork: edit an old checkpoint (as if `intake` had written it), run on from it.
    fork_config = graph.update_state(
        before_tools.config, {"note": "forked ↩ edited\x00note"}, as_node="intake"
    )
    graph.invoke(None, fork_config)
    # Time travel: replay from an old checkpoint without editing it.
    graph.invoke(None, before_respond.config)


def build_rich_corpus(path: str | Path) -> CorpusInfo:
    """Write a corpus that covers every value kind and control-flow feature.

    Threads (thread_id: scenario):

    - `rich-basic`: messages with tool calls, a pydantic model, a dataclass, a
      str-Enum, a datetime, a set, raw bytes, NUL/emoji/RTL/CJK strings,
      1e20 / NaN / inf / -0.0 floats, a big int, a DeltaChannel (`audit`,
      snapshot every 2 updates, so msgpack ext code 7 snapshots appear).
    - `rich-approve` and the unicode `UNICODE_THREAD_ID`: paused on an
      `interrupt()` in the parent graph.
    - `rich-review`: paused on an `interrupt()` inside the review subgraph
      (checkpoint_ns != '').
    - `rich-fanout`: `Send` fan-out of three workers; two finished (their writes
      are pending writes), one paused on an interrupt.
    - `rich-error`: a node raised; the last checkpoint has an `__error__` write.
    - `rich-branches`: an `update_state` fork and a time-travel replay, so the
      thread has three branches.
    - `rich-nul-metadata`: metadata with NUL in nested strings (see below),
      review subgraph interrupted and resumed to the end.
    - `QUOTED_THREAD_ID`: quotes and backslashes in the thread id.

    Nested NUL in metadata: `SqliteSaver` (via `get_checkpoint_metadata`) strips
    NUL only from top-level metadata strings and drops nested values from
    `config["metadata"]`. The one nested mapping the loop stores is
    `metadata["parents"]`, copied from `configurable["checkpoint_map"]`; so
    the thread is run with `checkpoint_map=NUL_CHECKPOINT_MAP` (NUL in a value
    and in a key), which also reaches the subgraph's checkpoints.
    """
    paused: dict[str, Any] = {}
    threads: list[str] = []
    with _new_corpus_saver(path) as saver:
        graph = build_rich_graph(saver)

        def run(thread_id: str, scenario: str, **configurable: Any) -> None:
            threads.append(thread_id)
            config = thread_config(thread_id, **configurable)
            # Top-level metadata strings lose their NUL on the way in.
            config["metadata"] = {"channel": "web\x00chat", "attempt": 1}
            try:
                graph.invoke(rich_input(scenario), config)
            except ValueError:
                # The `error` scenario fails by design; its __error__ write stays.
                if scenario != "error":
                    raise
            if scenario in RICH_RESUME_VALUES:
                paused[thread_id] = RICH_RESUME_VALUES[scenario]

        run("rich-basic", "basic")
        run("rich-approve", "approve")
        run(UNICODE_THREAD_ID, "approve")
        run("rich-review", "review")
        run("rich-fanout", "fanout")
        run("rich-error", "error")
        run("rich-branches", "basic")
        _write_branches(graph, "rich-branches")
        run("rich-nul-metadata", "review", checkpoint_map=NUL_CHECKPOINT_MAP)
        resume_paused_thread(graph, "rich-nul-metadata", paused.pop("rich-nul-metadata"))
        run(QUOTED_THREAD_ID, "basic")
    return CorpusInfo(Path(path), build_rich_graph, paused, tuple(threads))


# --------------------------------------------------------------------------
# The chat graph: a support agent with tools, approval and a summary subgraph
# --------------------------------------------------------------------------

CHAT_TOOLS = ("lookup_order", "check_warranty", "issue_refund")


class ChatState(TypedDict, total=False):
    """State of the chat agent graph."""

    messages: Annotated[list[AnyMessage], add_messages]
    customer: str
    opened_at: datetime
    labels: set[str]
    plan: list[str]
    approved: bool
    summary: str


class SummaryState(TypedDict, total=False):
    """State of the summary subgraph."""

    messages: Annotated[list[AnyMessage], add_messages]
    labels: set[str]
    summary: str


def _tool_rounds(messages: Sequence[AnyMessage]) -> int:
    """How many tool answers the agent got since the last human message."""
    rounds = 0
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        if isinstance(message, ToolMessage):
            rounds += 1
    return rounds


def chat_agent(state: ChatState) -> dict[str, Any]:
    """Call the next planned tool, or answer when the plan is done."""
    rounds = _tool_rounds(state["messages"])
    plan = state.get("plan", [])
    if rounds < len(plan):
        tool = plan[rounds]
        call_id = f"call_{len(state['messages'])}_{tool}"
        message = AIMessage(
            content=f"I will use {tool} to check this for {state['customer']}.",
            id=_message_id(state, "ai"),
            tool_calls=[
                {
                    "name": tool,
                    "args": {"customer": state["customer"], "round": rounds},
                    "id": call_id,
                    "type": "tool_call",
                }
            ],
        )
    else:
        message = AIMessage(
            content=(
                f"Thanks {state['customer']}, here is what I found: "
                + " ".join(f"[{t}: ok]" for t in plan)
                + " Anything else I can help with?"
            ),
            id=_message_id(state, "ai"),
        )
    return {"messages": [message]}


def chat_route_after_agent(state: ChatState) -> str:
    """Tools (after approval for refunds), or the summary when the agent is done."""
    last = state["messages"][-1]
    if not last.tool_calls:
        return "summarize"
    if last.tool_calls[0]["name"] == "issue_refund" and not state.get("approved"):
        return "approval"
    return "tools"


def chat_approval(state: ChatState) -> dict[str, Any]:
    """Pause until a human approves the refund."""
    answer = interrupt({"question": f"Refund {state['customer']}?", "tool": "issue_refund"})
    return {"approved": answer == "approve"}


def chat_tools(state: ChatState) -> dict[str, Any]:
    """Run the requested tool: a long, deterministic tool result."""
    call = state["messages"][-1].tool_calls[0]
    body = {
        "tool": call["name"],
        "customer": call["args"]["customer"],
        "approved": state.get("approved", False),
        "records": [
            {
                "line": i,
                "sku": f"SKU-{i:04d}",
                "text": f"{call['name']} record {i} for {call['args']['customer']}",
            }
            for i in range(8)
        ],
    }
    return {
        "messages": [
            ToolMessage(
                content=json.dumps(body, ensure_ascii=False),
                tool_call_id=call["id"],
                name=call["name"],
                id=f"tool-{call['id']}",
            )
        ],
        "labels": {*state.get("labels", set()), call["name"]},
    }


def summary_condense(state: SummaryState) -> dict[str, Any]:
    """Subgraph step 1: condense the conversation."""
    labels = sorted(state.get("labels", set()))
    return {"summary": f"{len(state['messages'])} messages; labels {labels}"}


def summary_label(state: SummaryState) -> dict[str, Any]:
    """Subgraph step 2: tag the ticket as summarized."""
    return {"labels": {*state.get("labels", set()), "summarized"}}


def build_summary_subgraph() -> CompiledStateGraph:
    """Compile the summary subgraph (it inherits the parent's checkpointer)."""
    builder = StateGraph(SummaryState)
    builder.add_node("condense", summary_condense)
    builder.add_node("label", summary_label)
    builder.add_edge(START, "condense")
    builder.add_edge("condense", "label")
    builder.add_edge("label", END)
    return builder.compile()


def build_chat_graph(checkpointer: BaseCheckpointSaver) -> CompiledStateGraph:
    """Compile the chat agent graph on `checkpointer`."""
    builder = StateGraph(ChatState)
    builder.add_node("agent", chat_agent)
    builder.add_node("approval", chat_approval)
    builder.add_node("tools", chat_tools)
    builder.add_node("summarize", build_summary_subgraph())
    builder.add_edge(START, "agent")
    builder.add_conditional_edges(
        "agent", chat_route_after_agent, ["approval", "tools", "summarize"]
    )
    builder.add_edge("approval", "tools")
    builder.add_edge("tools", "agent")
    builder.add_edge("summarize", END)
    return builder.compile(checkpointer=checkpointer)


_QUESTIONS = (
    "My parcel arrived damaged, the box was crushed and the lamp inside is broken.",
    "I was charged twice for the same order last week, can you check my invoices?",
    "The warranty card says two years but the shop told me only one, which is it?",
    "Can I change the delivery address of an order that has already shipped?",
)
_CUSTOMERS = ("Ana", "Björn", "Chidi", "Dana", "Émile", "Fatima", "Grace", "Hiro")


def chat_input(rng: random.Random, turn: int, with_refund: bool) -> dict[str, Any]:
    """A deterministic chat input drawn from `rng`."""
    plan = ["lookup_order", rng.choice(CHAT_TOOLS[:2])]
    if with_refund:
        plan.append("issue_refund")
    customer = rng.choice(_CUSTOMERS)
    return {
        "messages": [
            HumanMessage(
                content=f"{rng.choice(_QUESTIONS)} (turn {turn}, ref {rng.randrange(10**6):06d})",
                id=f"human-{turn}",
            )
        ],
        "customer": customer,
        "opened_at": datetime(2024, 1, 1, tzinfo=timezone.utc)
        + timedelta(minutes=rng.randrange(500_000)),
        "labels": {"inbox"},
        "plan": plan,
    }


def _run_chat_threads(
    graph: CompiledStateGraph,
    thread_ids: Sequence[str],
    rng: random.Random,
    refund_every: int,
) -> dict[str, Any]:
    """Run one chat turn per thread; every `refund_every`-th stays paused on approval."""
    paused: dict[str, Any] = {}
    for i, thread_id in enumerate(thread_ids):
        with_refund = refund_every > 0 and i % refund_every == refund_every - 1
        graph.invoke(chat_input(rng, 0, with_refund), thread_config(thread_id))
        if with_refund:
            paused[thread_id] = "approve"
    return paused


# --------------------------------------------------------------------------
# json rows (very old checkpoint format)
# --------------------------------------------------------------------------


def _constructor(
    obj: Any, *, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An lc-2 constructor envelope as `JsonPlusSerializer._reviver` revives it."""
    cls = type(obj)
    envelope: dict[str, Any] = {
        "lc": 2,
        "type": "constructor",
        "id": [*cls.__module__.split("."), cls.__name__],
    }
    if args is not None:
        envelope["args"] = list(args)
    if kwargs is not None:
        envelope["kwargs"] = kwargs
    return envelope


def legacy_json_default(obj: Any) -> Any:
    """`json.dumps` default that writes objects the way old jsonplus did.

    langchain `Serializable` objects (messages) become their lc-1 `to_json()`
    form; the rest become lc-2 constructor envelopes. Old versions wrote
    datetimes as `method="fromisoformat"` envelopes, but the installed reviver
    ignores `method` (it would call `datetime("2024-...")` and revive None), so
    datetimes are written with constructor kwargs instead, which it revives.
    Only types in LangGraph's safe list revive without an allowlist, so this
    is for corpora whose state uses those types only.
    """
    if isinstance(obj, Serializable):
        return obj.to_json()
    if isinstance(obj, (set, frozenset)):
        return _constructor(obj, args=[list(obj)])
    if isinstance(obj, datetime):
        return _constructor(
            obj,
            kwargs={
                "year": obj.year,
                "month": obj.month,
                "day": obj.day,
                "hour": obj.hour,
                "minute": obj.minute,
                "second": obj.second,
                "microsecond": obj.microsecond,
                "tzinfo": obj.tzinfo,
            },
        )
    if isinstance(obj, timezone):
        return _constructor(obj, args=obj.__getinitargs__())  # type: ignore[attr-defined]
    if isinstance(obj, timedelta):
        return _constructor(obj, args=[obj.days, obj.seconds, obj.microseconds])
    if isinstance(obj, Send):
        return _constructor(obj, kwargs={"node": obj.node, "arg": obj.arg})
    if is_dataclass(obj) and not isinstance(obj, type):
        return _constructor(obj, kwargs={f.name: getattr(obj, f.name) for f in fields(obj)})
    raise TypeError(f"no legacy JSON form for {type(obj).__name__}")


def legacy_json_dumps_typed(value: Any) -> tuple[str, bytes]:
    """Serialize like a very old `JsonPlusSerializer.dumps_typed`: json unless None/bytes."""
    if value is None:
        return "null", b""
    if isinstance(value, (bytes, bytearray)):
        return type(value).__name__, bytes(value)
    return "json", json.dumps(value, default=legacy_json_default, ensure_ascii=False).encode()


def _rewrite_as_json(
    conn: sqlite3.Connection, thread_id: str, up_to_checkpoint_id: str | None
) -> None:
    """Re-encode a thread's checkpoint and write values as `json` rows.

    Only rows with checkpoint_id <= `up_to_checkpoint_id` are rewritten (all
    rows when None), like a thread that was continued after an upgrade.
    """
    serde = JsonPlusSerializer()
    limit = up_to_checkpoint_id or "\U0010ffff"
    rows = conn.execute(
        "SELECT checkpoint_ns, checkpoint_id, type, checkpoint FROM checkpoints "
        "WHERE thread_id = ? AND checkpoint_id <= ?",
        (thread_id, limit),
    ).fetchall()
    for ns, checkpoint_id, type_, blob in rows:
        new_type, new_blob = legacy_json_dumps_typed(serde.loads_typed((type_, blob)))
        conn.execute(
            "UPDATE checkpoints SET type = ?, checkpoint = ? "
            "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
            (new_type, new_blob, thread_id, ns, checkpoint_id),
        )
    rows = conn.execute(
        "SELECT checkpoint_ns, checkpoint_id, task_id, idx, type, value FROM writes "
        "WHERE thread_id = ? AND checkpoint_id <= ?",
        (thread_id, limit),
    ).fetchall()
    for ns, checkpoint_id, task_id, idx, type_, blob in rows:
        new_type, new_blob = legacy_json_dumps_typed(serde.loads_typed((type_, blob)))
        conn.execute(
            "UPDATE writes SET type = ?, value = ? WHERE thread_id = ? AND checkpoint_ns = ? "
            "AND checkpoint_id = ? AND task_id = ? AND idx = ?",
            (new_type, new_blob, thread_id, ns, checkpoint_id, task_id, idx),
        )
    conn.commit()


def read_all_tuples(saver: SqliteSaver) -> list[Any]:
    """Every checkpoint tuple in the database, newest first, via `SqliteSaver.list`."""
    return list(saver.list(None))


def build_json_rows_corpus(path: str | Path) -> CorpusInfo:
    """Write chat-graph threads whose rows use the old `json` type.

    The installed jsonplus can only *read* `json` (it has no JSON dumps route
    any more), so the rows are re-encoded with `json.dumps` and
    `legacy_json_default` (lc-1 messages, lc-2 envelopes for set, datetime,
    Send, Interrupt, ...). Threads:

    - `json-complete`: every row json.
    - `json-paused`: every row json, paused on the approval interrupt.
    - `json-mixed`: the first turn's rows json, the second turn's msgpack
      (a thread continued after an upgrade).

    Asserts that `SqliteSaver.list` reads every row back equal to the msgpack
    original (checkpoint, metadata, pending writes).
    """
    rng = random.Random(7)
    with _new_corpus_saver(path) as saver:
        graph = build_chat_graph(saver)
        paused = _run_chat_threads(graph, ["json-complete", "json-paused"], rng, refund_every=2)
        graph.invoke(chat_input(rng, 0, False), thread_config("json-mixed"))
        first_turn = saver.get_tuple(thread_config("json-mixed"))
        first_turn_end = first_turn.config["configurable"]["checkpoint_id"]
        graph.invoke(chat_input(rng, 1, False), thread_config("json-mixed"))

        before = read_all_tuples(saver)
        _rewrite_as_json(saver.conn, "json-complete", None)
        _rewrite_as_json(saver.conn, "json-paused", None)
        _rewrite_as_json(saver.conn, "json-mixed", first_turn_end)
        after = read_all_tuples(saver)
        assert after == before, "json rows do not read back equal to the msgpack rows"
        types = {t for (t,) in saver.conn.execute("SELECT DISTINCT type FROM checkpoints")}
        assert types == {"json", "msgpack"}, types
    return CorpusInfo(
        Path(path), build_chat_graph, paused, ("json-complete", "json-paused", "json-mixed")
    )


# --------------------------------------------------------------------------
# Encrypted rows
# --------------------------------------------------------------------------


def build_encrypted_corpus(path: str | Path, key: bytes) -> CorpusInfo:
    """Write chat-graph threads with `EncryptedSerializer` (AES, type `msgpack+aes`).

    Threads `enc-0` .. `enc-3`; `enc-1` and `enc-3` are paused on the approval
    interrupt. `CorpusInfo.serde` is the serializer needed to read them.
    """
    serde = EncryptedSerializer.from_pycryptodome_aes(key=key)
    thread_ids = [f"enc-{i}" for i in range(4)]
    with _new_corpus_saver(path, serde=serde) as saver:
        graph = build_chat_graph(saver)
        paused = _run_chat_threads(graph, thread_ids, random.Random(11), refund_every=2)
    return CorpusInfo(Path(path), build_chat_graph, paused, tuple(thread_ids), serde)


# --------------------------------------------------------------------------
# v3 checkpoints with pending_sends (langgraph < 0.3)
# --------------------------------------------------------------------------


class DispatchState(TypedDict, total=False):
    """State of the dispatch graph: a plan fanned out with Send."""

    requests: list[str]
    results: Annotated[list[str], operator.add]
    summary: str


class DispatchTask(TypedDict):
    """The argument of each `Send("handle", ...)`."""

    request: str


def dispatch_plan(state: DispatchState) -> dict[str, Any]:
    """Start the dispatch round."""
    return {"summary": f"dispatching {len(state['requests'])} requests"}


def dispatch_fan_out(state: DispatchState) -> list[Send]:
    """One `Send` per request."""
    return [Send("handle", {"request": request}) for request in state["requests"]]


def dispatch_handle(task: DispatchTask) -> dict[str, Any]:
    """Handle one request; `approve:` requests pause for a human."""
    request = task["request"]
    if request.startswith("approve:"):
        return {"results": [f"{request} -> {interrupt({'question': request})}"]}
    return {"results": [f"{request} -> done"]}


def dispatch_summarize(state: DispatchState) -> dict[str, Any]:
    """Summarize the results."""
    return {"summary": f"{len(state['results'])} results: " + "; ".join(state["results"])}


def build_dispatch_graph(checkpointer: BaseCheckpointSaver) -> CompiledStateGraph:
    """Compile the dispatch (Send fan-out) graph on `checkpointer`."""
    builder = StateGraph(DispatchState)
    builder.add_node("plan", dispatch_plan)
    builder.add_node("handle", dispatch_handle)
    builder.add_node("summarize", dispatch_summarize)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", dispatch_fan_out, ["handle"])
    builder.add_edge("handle", "summarize")
    builder.add_edge("summarize", END)
    return builder.compile(checkpointer=checkpointer)


def _legacy_writes_metadata(
    graph: CompiledStateGraph, thread_id: str
) -> dict[str, dict[str, Any] | None]:
    """checkpoint_id -> the `writes` metadata langgraph < 0.3 stored with it.

    Old versions recorded, per checkpoint, the output of the tasks that produced
    it: `{"__start__": input}` on the input checkpoint, then `{node: output}` (a
    list when several tasks of one node ran), and None when no visible node
    wrote anything (e.g. the step that only ran `__start__`).
    """
    history = list(graph.get_state_history(thread_config(thread_id)))
    by_id = {s.config["configurable"]["checkpoint_id"]: s for s in history}
    result: dict[str, dict[str, Any] | None] = {}
    for snapshot in history:
        checkpoint_id = snapshot.config["configurable"]["checkpoint_id"]
        if snapshot.metadata["source"] == "input":
            result[checkpoint_id] = {"__start__": snapshot.tasks[0].result}
            continue
        parent = by_id[snapshot.parent_config["configurable"]["checkpoint_id"]]
        outputs: dict[str, list[Any]] = {}
        for task in parent.tasks:
            if task.name != "__start__" and task.result is not None:
                outputs.setdefault(task.name, []).append(task.result)
        result[checkpoint_id] = {
            name: values[0] if len(values) == 1 else values for name, values in outputs.items()
        } or None
    return result


def _downgrade_to_v3(saver: SqliteSaver, graph: CompiledStateGraph, thread_id: str) -> int:
    """Rewrite a thread's checkpoints as langgraph < 0.3 stored them; return how many had sends.

    v3 had no `__pregel_tasks` channel: the Sends a step produced were kept in
    the next checkpoint's `pending_sends` list, and also as `__pregel_tasks`
    writes of the tasks that made them (on the parent checkpoint, already in the
    `writes` table). It had no `updated_channels` key, and its metadata carried
    `writes`.
    """
    writes_metadata = _legacy_writes_metadata(graph, thread_id)
    serde = saver.serde
    conn = saver.conn
    with_sends = 0
    rows = conn.execute(
        "SELECT checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata FROM checkpoints "
        "WHERE thread_id = ? AND checkpoint_ns = ''",
        (thread_id,),
    ).fetchall()
    for checkpoint_id, parent_id, type_, blob, metadata in rows:
        checkpoint = serde.loads_typed((type_, blob))
        sends = checkpoint["channel_values"].pop(TASKS, [])
        checkpoint["channel_versions"].pop(TASKS, None)
        for seen in checkpoint["versions_seen"].values():
            seen.pop(TASKS, None)
        checkpoint.pop("updated_channels", None)
        checkpoint["pending_sends"] = list(sends)
        checkpoint["v"] = 3
        if sends:
            with_sends += 1
            parent_sends = [
                serde.loads_typed((t, v))
                for t, v in conn.execute(
                    "SELECT type, value FROM writes WHERE thread_id = ? AND checkpoint_ns = '' "
                    "AND checkpoint_id = ? AND channel = ? ORDER BY task_path, task_id, idx",
                    (thread_id, parent_id, TASKS),
                )
            ]
            assert parent_sends == sends, "parent __pregel_tasks writes differ from the sends"
        meta = json.loads(metadata)
        meta["writes"] = writes_metadata[checkpoint_id]
        new_type, new_blob = serde.dumps_typed(checkpoint)
        new_meta = json.dumps(meta, ensure_ascii=False).encode()
        conn.execute(
            "UPDATE checkpoints SET type = ?, checkpoint = ?, metadata = ? "
            "WHERE thread_id = ? AND checkpoint_ns = '' AND checkpoint_id = ?",
            (new_type, new_blob, new_meta, thread_id, checkpoint_id),
        )
    conn.commit()
    return with_sends


V3_RESUME_VALUE = "approved by ops"


def build_v3_pending_sends_corpus(path: str | Path) -> CorpusInfo:
    """Write dispatch-graph threads rewritten as checkpoint format v3 (langgraph < 0.3).

    Threads: `v3-complete` (all Sends finished), `v3-paused` (one Send task
    paused on an interrupt; the finished tasks' writes are pending writes),
    `v3-resumed` (paused, then resumed before the rewrite). Every checkpoint of
    these threads has `v` = 3 and `pending_sends`; the Send step's checkpoint
    lists the Sends there instead of in `channel_values["__pregel_tasks"]`.

    Asserts that `SqliteSaver.list` reads the rows and that `graph.get_state`
    (which migrates v3 checkpoints) still sees the pending Send tasks.
    """
    requests = {
        "v3-complete": ["ship A-1", "ship A-2", "ship A-3"],
        "v3-paused": ["ship B-1", "approve:refund B-2", "ship B-3"],
        "v3-resumed": ["approve:refund C-1", "ship C-2"],
    }
    with _new_corpus_saver(path) as saver:
        graph = build_dispatch_graph(saver)
        for thread_id, items in requests.items():
            graph.invoke({"requests": items}, thread_config(thread_id))
        resume_paused_thread(graph, "v3-resumed", V3_RESUME_VALUE)
        for thread_id in requests:
            assert _downgrade_to_v3(saver, graph, thread_id) == 1, thread_id

        for checkpoint in read_all_tuples(saver):
            assert checkpoint.checkpoint["v"] == 3
            assert TASKS not in checkpoint.checkpoint["channel_values"]
        paused = graph.get_state(thread_config("v3-paused"))
        # Three Send tasks rebuilt from pending_sends: two finished, one waiting.
        assert [t.name for t in paused.tasks] == ["handle"] * 3, paused.tasks
        assert paused.next == ("handle",), paused.next
        assert len(paused.interrupts) == 1, paused.interrupts
        complete = graph.get_state(thread_config("v3-complete"))
        assert complete.values["summary"].startswith("3 results"), complete.values
    return CorpusInfo(
        Path(path), build_dispatch_graph, {"v3-paused": V3_RESUME_VALUE}, tuple(requests)
    )


# --------------------------------------------------------------------------
# writes table without task_path (sqlite saver before that column)
# --------------------------------------------------------------------------


def _drop_task_path_column(conn: sqlite3.Connection) -> None:
    """Recreate `writes` exactly as savers before the `task_path` column made it."""
    conn.executescript(
        """
        CREATE TABLE writes_legacy (
            thread_id TEXT NOT NULL,
            checkpoint_ns TEXT NOT NULL DEFAULT '',
            checkpoint_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            channel TEXT NOT NULL,
            type TEXT,
            value BLOB,
            PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
        );
        INSERT INTO writes_legacy
            SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value
            FROM writes;
        DROP TABLE writes;
        ALTER TABLE writes_legacy RENAME TO writes;
        """
    )
    conn.commit()


def build_legacy_no_task_path_corpus(path: str | Path) -> CorpusInfo:
    """Write chat-graph threads, then drop the `task_path` column from `writes`.

    Threads `legacy-0` .. `legacy-3`; `legacy-2` is paused on approval. Open
    the file read-only (`open_sqlite_saver(..., read_only=True)`) to keep it
    legacy: a writable `SqliteSaver.setup()` adds the column back.
    """
    thread_ids = [f"legacy-{i}" for i in range(4)]
    with _new_corpus_saver(path) as saver:
        graph = build_chat_graph(saver)
        paused = _run_chat_threads(graph, thread_ids, random.Random(3), refund_every=3)
        before = read_all_tuples(saver)
        _drop_task_path_column(saver.conn)
    with open_sqlite_saver(path, read_only=True) as saver:
        assert read_all_tuples(saver) == before
        assert saver._has_task_path is False
    return CorpusInfo(Path(path), build_chat_graph, paused, tuple(thread_ids))


# --------------------------------------------------------------------------
# Scaled corpus for benchmarks
# --------------------------------------------------------------------------


def build_scaled_corpus(path: str | Path, threads: int, seed: int = 0) -> CorpusInfo:
    """Write `threads` chat-agent threads for benchmarks.

    Each thread: a human question, two tool rounds, a final answer and the
    summary subgraph (12 checkpoints, 27 writes rows, 2-4 KB per checkpoint).
    Every eighth thread asks for a refund and stays paused on the approval
    interrupt (7 checkpoints, 19 writes rows). Thread ids are `scaled-00000`, ...; content comes from
    `random.Random(seed)`.
    """
    rng = random.Random(seed)
    thread_ids = [f"scaled-{i:05d}" for i in range(threads)]
    with _new_corpus_saver(path) as saver:
        graph = build_chat_graph(saver)
        paused = _run_chat_threads(graph, thread_ids, rng, refund_every=8)
    return CorpusInfo(Path(path), build_chat_graph, paused, tuple(thread_ids))


def build_every_corpus(root: Path, aes_key: bytes, scaled_threads: int) -> dict[str, CorpusInfo]:
    """Every corpus of the suite in ``root``, by name: rich, json, encrypted (with
    ``aes_key``), v3, legacy, scaled (``scaled_threads`` threads)."""
    return {
        "rich": build_rich_corpus(root / "rich.sqlite"),
        "json": build_json_rows_corpus(root / "json.sqlite"),
        "encrypted": build_encrypted_corpus(root / "encrypted.sqlite", aes_key),
        "v3": build_v3_pending_sends_corpus(root / "v3.sqlite"),
        "legacy": build_legacy_no_task_path_corpus(root / "legacy.sqlite"),
        "scaled": build_scaled_corpus(root / "scaled.sqlite", scaled_threads),
    }

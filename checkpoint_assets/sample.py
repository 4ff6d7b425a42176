"""A small SQLite checkpoint database written by a real LangGraph support agent.

`write_sample_database` is what the README quick start uses to get something to
migrate. It runs a customer-support graph on a real `SqliteSaver`:

- `triage` is a subgraph (its checkpoints have a non-empty `checkpoint_ns`);
- `agent` answers with `AIMessage`s that carry tool calls;
- `tools` is LangGraph's prebuilt `ToolNode`, answering with `ToolMessage`s;
- `approval` pauses refunds on `interrupt()` until a human decides; some
  threads are left paused there, the others are resumed (approved or denied).

langgraph is an optional dependency (`pip install 'checkpoint-assets[sample]'`),
so it is imported only inside the functions that need it. The values stored in
checkpoints (`TicketCategory`, `RefundRequest`) are plain-stdlib classes defined
at module level, because the checkpoint serializer re-imports them by module
path when the checkpoints are read back.

Content is deterministic; only LangGraph's own ids and timestamps vary.
"""

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

_INSTALL_HINT = (
    "writing the sample database needs langgraph and langgraph-checkpoint-sqlite; "
    "install them with: pip install 'checkpoint-assets[sample]'"
)


@dataclass(frozen=True)
class SampleSummary:
    """What `write_sample_database` wrote."""

    path: Path
    thread_count: int
    checkpoint_count: int
    write_count: int


class TicketCategory(str, Enum):
    """The queue a ticket is triaged into."""

    SHIPPING = "shipping"
    BILLING = "billing"
    REFUND = "refund"


@dataclass(frozen=True)
class RefundRequest:
    """A refund waiting for a human's approval."""

    order_id: str
    amount_cents: int
    currency: str
    reason: str


_QUESTIONS = {
    TicketCategory.SHIPPING: "Where is my parcel? Order {order} has not moved for a week.",
    TicketCategory.BILLING: "I was charged twice for order {order}, can you check?",
    TicketCategory.REFUND: "Order {order} arrived broken, I would like my money back.",
}
_CUSTOMERS = ("Ana", "Björn", "Chidi", "Dana", "Émile", "Fatima", "Grace", "Hiro")


def lookup_order(order_id: str) -> str:
    """Look up the shipping and billing status of an order."""
    number = int(order_id.split("-")[1])
    return (
        f"Order {order_id}: 2 items, paid {number % 90 + 10}.99 EUR, "
        f"carrier DHL, last scan {number % 28 + 1} days ago in Leipzig."
    )


def issue_refund(order_id: str, amount_cents: int) -> str:
    """Refund an order (only called after a human approved it)."""
    return f"Refund of {amount_cents / 100:.2f} EUR for {order_id} issued."


def _thread_plan(index: int) -> dict[str, Any]:
    """The deterministic customer, order and category of sample thread `index`."""
    category = list(TicketCategory)[index % 3]
    order = f"A-{1000 + index}"
    return {
        "thread_id": f"support-{index:03d}",
        "customer": _CUSTOMERS[index % len(_CUSTOMERS)],
        "order": order,
        "category": category,
        "question": _QUESTIONS[category].format(order=order),
    }


def _build_support_graph(checkpointer: Any) -> Any:
    """Compile the support-agent graph on `checkpointer` (imports langgraph)."""
    from typing import Annotated, TypedDict

    from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages
    from langgraph.prebuilt import ToolNode
    from langgraph.types import interrupt

    class SupportState(TypedDict, total=False):
        messages: Annotated[list[AnyMessage], add_messages]
        customer: str
        order_id: str
        category: TicketCategory
        queue: str
        pending_refund: RefundRequest
        refund_approved: bool

    def classify(state: SupportState) -> dict[str, Any]:
        text = state["messages"][-1].content.lower()
        if "money back" in text:
            category = TicketCategory.REFUND
        elif "charged" in text:
            category = TicketCategory.BILLING
        else:
            category = TicketCategory.SHIPPING
        return {"category": category}

    def route_queue(state: SupportState) -> dict[str, Any]:
        return {"queue": f"tier1-{state['category'].value}"}

    triage = StateGraph(SupportState)
    triage.add_node("classify", classify)
    triage.add_node("route_queue", route_queue)
    triage.add_edge(START, "classify")
    triage.add_edge("classify", "route_queue")
    triage.add_edge("route_queue", END)

    def answered_tools(state: SupportState) -> set[str]:
        names = set()
        for message in reversed(state["messages"]):
            if isinstance(message, HumanMessage):
                break
            if isinstance(message, ToolMessage):
                names.add(message.name)
        return names

    def agent(state: SupportState) -> dict[str, Any]:
        done = answered_tools(state)
        position = len(state["messages"])
        order_id = state["order_id"]
        if "lookup_order" not in done:
            call = {"name": "lookup_order", "args": {"order_id": order_id}}
        elif state["category"] is TicketCategory.REFUND and "issue_refund" not in done:
            amount = 1000 + int(order_id.split("-")[1]) % 90 * 100 + 99
            call = {"name": "issue_refund", "args": {"order_id": order_id, "amount_cents": amount}}
        else:
            reply = f"Thanks {state['customer']}, I have handled your request about {order_id}."
            return {"messages": [AIMessage(content=reply, id=f"ai-{position}")]}
        call.update(id=f"call-{position}-{call['name']}", type="tool_call")
        text = f"Let me run {call['name']} for {order_id}."
        return {"messages": [AIMessage(content=text, id=f"ai-{position}", tool_calls=[call])]}

    def route_after_agent(state: SupportState) -> str:
        last = state["messages"][-1]
        if not last.tool_calls:
            return END
        return "approval" if last.tool_calls[0]["name"] == "issue_refund" else "tools"

    def approval(state: SupportState) -> dict[str, Any]:
        call = state["messages"][-1].tool_calls[0]
        request = RefundRequest(
            order_id=call["args"]["order_id"],
            amount_cents=call["args"]["amount_cents"],
            currency="EUR",
            reason="item arrived broken",
        )
        decision = interrupt({"question": "Approve this refund?", "refund": request})
        if decision == "approve":
            return {"pending_refund": request, "refund_approved": True}
        denied = ToolMessage(
            content="Refund denied by a human reviewer.",
            tool_call_id=call["id"],
            name="issue_refund",
            id=f"tool-{call['id']}",
        )
        return {"pending_refund": request, "refund_approved": False, "messages": [denied]}

    def route_after_approval(state: SupportState) -> str:
        return "tools" if state["refund_approved"] else "agent"

    builder = StateGraph(SupportState)
    builder.add_node("triage", triage.compile())
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([lookup_order, issue_refund]))
    builder.add_node("approval", approval)
    builder.add_edge(START, "triage")
    builder.add_edge("triage", "agent")
    builder.add_conditional_edges("agent", route_after_agent, ["tools", "approval", END])
    builder.add_conditional_edges("approval", route_after_approval, ["tools", "agent"])
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


def write_sample_database(path: str | Path, threads: int = 20) -> SampleSummary:
    """Write a sample SqliteSaver database of `threads` support conversations.

    Every third thread asks for a refund and pauses on the approval interrupt;
    of those, every other one is left paused and the rest are resumed
    (alternately approved and denied). The file must not exist yet.

    Raises:
        RuntimeError: langgraph or its SQLite checkpointer is not installed.
        FileExistsError: `path` already exists.
    """
    try:
        from langchain_core.messages import HumanMessage
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.types import Command
    except ImportError as exc:
        raise RuntimeError(_INSTALL_HINT) from exc

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new path or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: LangGraph saves checkpoints from a background thread.
    with closing(sqlite3.connect(str(path), check_same_thread=False)) as conn:
        conn.execute("PRAGMA synchronous=NORMAL")
        graph = _build_support_graph(SqliteSaver(conn))
        refunds_seen = 0
        for index in range(threads):
            plan = _thread_plan(index)
            config = {"configurable": {"thread_id": plan["thread_id"]}}
            first = HumanMessage(content=plan["question"], id="human-0")
            graph.invoke(
                {"messages": [first], "customer": plan["customer"], "order_id": plan["order"]},
                config,
            )
            if plan["category"] is TicketCategory.REFUND:
                refunds_seen += 1
                if refunds_seen % 2 == 0:
                    decision = "approve" if refunds_seen % 4 == 0 else "deny"
                    graph.invoke(Command(resume=decision), config)
        checkpoint_count = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        write_count = conn.execute("SELECT count(*) FROM writes").fetchone()[0]
    return SampleSummary(path, threads, checkpoint_count, write_count)

"""Unseen corpora: graphs the test-suite never uses (prebuilt ReAct agent, map-reduce,
nested subgraphs with Command(goto), interrupts inside tools)."""
import operator
import sqlite3
import sys
from typing import Annotated, TypedDict

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import create_react_agent
from langgraph.types import Command, Send, interrupt


@tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"

@tool
def book_flight(city: str) -> str:
    """Book a flight; needs human approval."""
    ok = interrupt({"question": f"book a flight to {city}?"})
    return f"booked {city}" if ok == "yes" else "cancelled"

class FakeToolModel(FakeMessagesListChatModel):
    def bind_tools(self, tools, **kw):
        return self

def react_agent(saver, n):
    responses = [AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": f"c{n}"}, "id": f"w{n}"}]),
                 AIMessage(content="", tool_calls=[{"name": "book_flight", "args": {"city": f"c{n}"}, "id": f"b{n}"}]),
                 AIMessage(content=f"done {n} ✈️")]
    return create_react_agent(FakeToolModel(responses=responses), [get_weather, book_flight], checkpointer=saver)

class MR(TypedDict):
    topics: list[str]
    jokes: Annotated[list[str], operator.add]
    best: str

def mapreduce(saver):
    g = StateGraph(MR)
    g.add_node("gen", lambda s: {"jokes": [f"joke about {s['topic']}"]})
    g.add_node("pick", lambda s: {"best": max(s["jokes"])})
    g.add_conditional_edges(START, lambda s: [Send("gen", {"topic": t}) for t in s["topics"]], ["gen"])
    g.add_edge("gen", "pick"); g.add_edge("pick", END)
    return g.compile(checkpointer=saver)

class Inner(TypedDict):
    log: Annotated[list[str], operator.add]
    level: int

def nested(saver):
    leaf = StateGraph(Inner)
    def ask(s):
        answer = interrupt(f"level {s['level']} ok?")
        return Command(goto=END, update={"log": [f"leaf:{answer}"]})
    leaf.add_node("ask", ask); leaf.add_edge(START, "ask")
    mid = StateGraph(Inner); mid.add_node("leaf", leaf.compile()); mid.add_node("note", lambda s: {"log": ["mid"]})
    mid.add_edge(START, "note"); mid.add_edge("note", "leaf"); mid.add_edge("leaf", END)
    top = StateGraph(Inner); top.add_node("mid", mid.compile()); top.add_edge(START, "mid"); top.add_edge("mid", END)
    return top.compile(checkpointer=saver)

def build(path):
    conn = sqlite3.connect(path, check_same_thread=False); saver = SqliteSaver(conn)
    paused = {}
    for n in range(40):
        a = react_agent(saver, n); cfg = {"configurable": {"thread_id": f"react-{n}"}}
        a.invoke({"messages": [HumanMessage(content=f"trip {n}")]}, cfg)
        if n % 3: a.invoke(Command(resume="yes"), cfg)
        else: paused[f"react-{n}"] = ("react", n, "yes")
    m = mapreduce(saver)
    for n in range(30):
        m.invoke({"topics": [f"t{n}-{i}" for i in range(n % 5 + 1)]}, {"configurable": {"thread_id": f"mr-{n}"}})
    ng = nested(saver)
    for n in range(20):
        cfg = {"configurable": {"thread_id": f"nested-{n}"}}
        ng.invoke({"log": ["start"], "level": n}, cfg)
        if n % 2: ng.invoke(Command(resume=f"ok{n}"), cfg)
        else: paused[f"nested-{n}"] = ("nested", n, f"ok{n}")
    conn.close()
    return paused

if __name__ == "__main__":
    import json
    print(json.dumps(build(sys.argv[1])))

"""An application that evolves while it writes one SqliteSaver database.

Each version is a real Python project written to a directory and run as its own process
(``python -m`` a script or a package module), the way a deployment, a cron script or a
notebook would run it; none of its classes is importable from the test process. The
versions write the re-encodings a long-lived database collects:

- ``entry_one.py`` defines its pydantic ``Profile`` in ``__main__``; ``entry_two.py`` (a
  second entry point, the same graph) cannot import it, so LangGraph falls back to a plain
  mapping and SqliteSaver re-saves the unchanged ``profile`` at its old version as a map;
- ``shop.models`` v1 -> v2: ``Profile`` gains a field with a default;
- ``shop.models`` v1 -> v2-moved: the ``Address`` dataclass moves to ``shop.places``;
- v3-validator: ``Profile`` gains a validator that rewrites the name on load, so the value
  re-saved at the old version differs in CONTENT (what must never pass as encoding only).

Every graph is the same shape: ``remember`` sets the profile on the first turn only (its
channel version never changes after), ``talk`` appends a turn, and ``approve`` pauses on an
``interrupt()`` when the input asks for approval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

GRAPH = '''
import operator
import sys
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt


class State(TypedDict, total=False):
    profile: Any
    address: Any
    turns: Annotated[list, operator.add]
    approved: Any


def build(saver, make_profile, make_address):
    def remember(state):
        if state.get("profile") is None:
            return {"profile": make_profile(), "address": make_address()}
        return {}

    def talk(state):
        return {"turns": [f"turn {len(state.get('turns') or []) + 1}"]}

    def approve(state):
        return {"approved": interrupt({"question": "ship it?"})}

    def route(state):
        return "approve" if (state.get("turns") or [""])[-1].endswith("?") else END

    graph = StateGraph(State)
    graph.add_node("remember", remember)
    graph.add_node("talk", talk)
    graph.add_node("approve", approve)
    graph.add_edge(START, "remember")
    graph.add_edge("remember", "talk")
    graph.add_conditional_edges("talk", route, ["approve", END])
    graph.add_edge("approve", END)
    return graph.compile(checkpointer=saver)


def run(db, make_profile, make_address, argv):
    """argv: thread_id, then 'turn', 'ask' (a turn that pauses) or 'resume=VALUE'."""
    with SqliteSaver.from_conn_string(db) as saver:
        graph = build(saver, make_profile, make_address)
        config = {"configurable": {"thread_id": argv[0]}}
        for action in argv[1:]:
            if action.startswith("resume="):
                graph.invoke(Command(resume=action[len("resume="):]), config)
            else:
                turns = ["?"] if action == "ask" else []
                graph.invoke({"turns": turns}, config)
'''

# shop/models.py, by version.
MODELS = {
    "v1": '''
from dataclasses import dataclass
from pydantic import BaseModel


class Profile(BaseModel):
    name: str
    plan: str


@dataclass
class Address:
    city: str
    zip: str
''',
    "v2": '''
from dataclasses import dataclass
from pydantic import BaseModel


class Profile(BaseModel):
    name: str
    plan: str
    tier: str = "free"


@dataclass
class Address:
    city: str
    zip: str
''',
    "v2-moved": '''
from pydantic import BaseModel

from shop.places import Address  # noqa: F401  (moved; shop.models.Address is gone)


class Profile(BaseModel):
    name: str
    plan: str
''',
    "v3-validator": '''
from dataclasses import dataclass
from pydantic import BaseModel, field_validator


class Profile(BaseModel):
    name: str
    plan: str

    @field_validator("name")
    @classmethod
    def shout(cls, value: str) -> str:
        return value.upper()


@dataclass
class Address:
    city: str
    zip: str
''',
}

PLACES = '''
from dataclasses import dataclass


@dataclass
class Address:
    city: str
    zip: str
'''

SHOP_MAIN = '''
import sys

from shop.graph import run
from shop.models import Address, Profile

run(sys.argv[1], lambda: Profile(name="Ada \\u00e9\\x00", plan="pro"),
    lambda: Address(city="Z\\u00fcrich", zip="8001"), sys.argv[2:])
'''

ENTRY_ONE = '''
import sys

from pydantic import BaseModel

from shop.graph import run


class Profile(BaseModel):
    name: str
    plan: str


run(sys.argv[1], lambda: Profile(name="Grace", plan="team"), lambda: None, sys.argv[2:])
'''

ENTRY_TWO = '''
import sys

from shop.graph import run

# The same graph from another entry point: this script has no Profile class.
run(sys.argv[1], lambda: {"name": "never used", "plan": "none"}, lambda: None, sys.argv[2:])
'''


class EvolvingApp:
    """The application's project directory and the versions it can be switched to."""

    def __init__(self, root: Path, database: Path) -> None:
        self.root = root
        self.database = database
        (root / "shop").mkdir(parents=True, exist_ok=True)
        (root / "shop" / "__init__.py").write_text("")
        (root / "shop" / "graph.py").write_text(GRAPH)
        (root / "shop" / "__main__.py").write_text(SHOP_MAIN)
        (root / "entry_one.py").write_text(ENTRY_ONE)
        (root / "entry_two.py").write_text(ENTRY_TWO)
        self.version("v1")

    def version(self, name: str) -> None:
        """Deploy version ``name`` of shop.models (and shop.places when it exists)."""
        (self.root / "shop" / "models.py").write_text(textwrap.dedent(MODELS[name]))
        places = self.root / "shop" / "places.py"
        if name == "v2-moved":
            places.write_text(PLACES)
        elif places.exists():
            places.unlink()

    def run(self, entry: str, thread_id: str, *actions: str) -> None:
        """Run the application once: ``entry`` is ``shop`` (python -m shop), or a script
        name (``entry_one.py``); ``actions`` are 'turn', 'ask' or 'resume=VALUE'."""
        command = [sys.executable, "-m", "shop"] if entry == "shop" \
            else [sys.executable, entry]
        env = {**os.environ, "PYTHONPATH": str(self.root), "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run([*command, str(self.database), thread_id, *actions],
                              cwd=self.root, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]

    def final_state(self, entry: str, thread_id: str, saver: str, dsn: str = "") -> Any:
        """The thread's state after resuming it with 'approved', read by ``entry``'s code
        on SqliteSaver (``saver`` 'sqlite', on a copy) or PostgresSaver ('postgres')."""
        script = RESUME.format(entry=entry)
        env = {**os.environ, "PYTHONPATH": str(self.root), "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run([sys.executable, "-c", script, saver, str(self.database), dsn,
                               thread_id], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


# Resume a paused thread with the application's own code and print its final state as
# JSON (pydantic models dumped, so states compare by value).
RESUME = '''
import json, shutil, sys, tempfile
from langgraph.types import Command
from shop.graph import build

saver_kind, db, dsn, thread_id = sys.argv[1:5]
if "{entry}" == "entry_two.py":
    make = (lambda: None, lambda: None)
else:
    from shop.models import Address, Profile
    make = (lambda: Profile(name="x", plan="x"), lambda: None)


def dump(value):
    if hasattr(value, "model_dump"):
        return {{"__model__": type(value).__name__, **dump(value.model_dump())}}
    if hasattr(value, "__dataclass_fields__"):
        return {{"__dataclass__": type(value).__name__, **dump(vars(value))}}
    if isinstance(value, dict):
        return {{k: dump(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    return value


def finish(saver):
    graph = build(saver, *make)
    config = {{"configurable": {{"thread_id": thread_id}}}}
    graph.invoke(Command(resume="approved"), config)
    print(json.dumps(dump(graph.get_state(config).values), sort_keys=True))


if saver_kind == "sqlite":
    from langgraph.checkpoint.sqlite import SqliteSaver
    copy = tempfile.mkdtemp() + "/copy.sqlite"
    shutil.copyfile(db, copy)
    with SqliteSaver.from_conn_string(copy) as saver:
        finish(saver)
else:
    from langgraph.checkpoint.postgres import PostgresSaver
    with PostgresSaver.from_conn_string(dsn) as saver:
        finish(saver)
'''

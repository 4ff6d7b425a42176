"""Independent comparison: every thread via SqliteSaver.list vs PostgresSaver.list, and
paused threads resumed on both backends."""
import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import make_unseen as mu
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

src, dsn = sys.argv[1], sys.argv[2]
paused = json.load(open(sys.argv[3] if len(sys.argv) > 3 else "paused.json"))
s = SqliteSaver(sqlite3.connect(src, check_same_thread=False))
threads = sorted({r[0] for r in s.conn.execute("select thread_id from checkpoints")})
diffs = compared = 0
with PostgresSaver.from_conn_string(dsn) as p:
    for t in threads:
        nss = sorted({r[0] for r in s.conn.execute("select checkpoint_ns from checkpoints where thread_id=?", (t,))})
        for ns in nss:
            cfg = {"configurable": {"thread_id": t, "checkpoint_ns": ns}}
            A, B = list(s.list(cfg)), list(p.list(cfg))
            if len(A) != len(B): diffs += 1; continue
            for a, b in zip(A, B):
                compared += 1
                if (a.config, a.checkpoint, a.metadata, a.parent_config, a.pending_writes) != (b.config, b.checkpoint, b.metadata, b.parent_config, b.pending_writes):
                    diffs += 1
    # The SQLite side resumes on a copy in a private directory, removed afterwards.
    with tempfile.TemporaryDirectory(prefix="compare-unseen-") as scratch:
        copy = Path(scratch) / "resume.sqlite"
        shutil.copy(src, copy)
        s2 = SqliteSaver(sqlite3.connect(copy, check_same_thread=False))
        same = 0
        for t, (kind, n, val) in paused.items():
            ga = mu.react_agent(s2, n) if kind == "react" else mu.nested(s2)
            gb = mu.react_agent(p, n) if kind == "react" else mu.nested(p)
            cfg = {"configurable": {"thread_id": t}}
            ra = ga.invoke(Command(resume=val), cfg); rb = gb.invoke(Command(resume=val), cfg)
            sa, sb = ga.get_state(cfg), gb.get_state(cfg)
            strip = lambda v: json.dumps(v, default=lambda o: getattr(o, "content", repr(o)) + str(getattr(o, "tool_calls", "")), sort_keys=True)
            if strip(sa.values) == strip(sb.values) and sa.next == sb.next: same += 1
            else: print("RESUME DIFF", t, strip(sa.values)[:300], "\n", strip(sb.values)[:300])
        s2.conn.close()
print(json.dumps({"threads": len(threads), "checkpoints_compared": compared, "differences": diffs, "paused_resumed": len(paused), "resumed_identically": same}))

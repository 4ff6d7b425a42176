"""Smoke test of the benchmark runner (benchmarks/run.py).

Runs ``python -m benchmarks.run --smoke`` as a subprocess against the test PostgreSQL and
checks that the JSON it writes has every step with a positive time. No timing assertions:
the numbers depend on the machine and on whatever else it is doing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE_STEPS = ("copy_ceiling", "api_loop", "export", "import", "verify", "migrate", "rollback")


def test_smoke_run_writes_every_step(admin_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    env = {**os.environ, "BENCH_ADMIN_DSN": admin_dsn}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    report = json.loads(out.read_text())
    (size,) = report["sizes"].values()
    assert size["corpus"]["checkpoints"] > 0
    for step in SMOKE_STEPS:
        result = size["steps"][step]
        assert result["seconds"] > 0, step
        assert result["peak_rss_mb"] > 0, step
        assert result["checkpoints"] == size["corpus"]["checkpoints"], step
    assert {t["status"] for t in report["targets"]} <= {"PASS", "MISS", "n/a"}

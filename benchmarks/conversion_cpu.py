"""CPU seconds of the in-process work every batch load does: decode, convert and build
the batch check's expected view, per batch of a cached benchmark corpus.

No database and no Dagster: the figure is the engine's own cost, repeatable on a busy
machine (process time, best of ``--rounds``). To compare two versions of the code, run
it from a worktree of each (with this package layout), back to back, on the same
corpus::

    .venv/bin/python -m benchmarks.conversion_cpu --size 10000
    (cd /tmp/base && /path/to/.venv/bin/python -m benchmarks.conversion_cpu --size 10000)

The corpus is the benchmark runner's (generated once into benchmarks/.cache/).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.run import CACHE, ensure_corpus
from checkpoint_assets.engine.export.reader import read_batch, read_manifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.convert import convert_thread, decode_thread
from checkpoint_assets.engine.verify.content_view import source_view


def conversion_seconds(export: Path, rounds: int) -> tuple[int, float]:
    """(checkpoints, best CPU seconds over ``rounds``) to convert every batch of the
    export and build its expected view, as a load and its batch check do."""
    manifest = read_manifest(export)
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for entry in manifest.batches:
            threads = list(read_batch(manifest, entry.key))
            decoded = {t.thread_id: decode_thread(t) for t in threads}
            for thread in threads:
                convert_thread(thread, None, decoded[thread.thread_id])
            source_view(threads, None, decoded).digest()
        best = min(best, time.process_time() - started)
    return manifest.checkpoints, best


def main() -> None:
    """Print the CPU seconds for a corpus of ``--size`` checkpoints."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    corpus = ensure_corpus(args.size, CACHE)
    with tempfile.TemporaryDirectory() as work:
        export = Path(work) / "corpus.export"
        write_export(corpus, export)
        checkpoints, seconds = conversion_seconds(export, args.rounds)
    print(f"{checkpoints} checkpoints: convert + expected view {seconds:.2f} s CPU "
          f"(best of {args.rounds}), {seconds / checkpoints * 1000:.3f} ms per checkpoint")


if __name__ == "__main__":
    main()

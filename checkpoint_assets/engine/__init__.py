"""The plain-Python migration engine. Nothing in this package imports Dagster.

Data flows one way: SQLite source -> export file -> PostgreSQL batches -> verification;
the way back is the same shape reversed. One subpackage per capability: ``core`` (what
every other one shares), ``export``, ``load``, ``verify``, ``sync``, ``rollback``. The
front door of typed requests and reports is the ``operations`` package beside them:
``operations.migration`` (export, load, verify, and the per-batch steps of a Dagster
run), ``operations.live`` (sync, cutover, a sync generation, a sync batch),
``operations.way_back`` (export_postgres, restore, rollback and their steps) and
``operations.contract`` (CONTRACT and what they share).

The import rule for every module outside engine/ (the CLI, the Dagster layer, settings,
the runner), enforced by checkpoint_assets_tests/test_architecture.py:

- Engine code is CALLED only through ``checkpoint_assets.engine.operations.<module>``:
  its operations, requests, reports and helpers may be imported freely.
- From any other engine module, import only what is never called into: exception
  classes (to raise, catch or test with isinstance; e.g. ``core.errors.MigrationError``),
  plain data types (dataclasses and enums, for annotations and isinstance checks and to
  read or build the values operations take and return; e.g. ``ExportManifest``,
  ``FailureKind``) and constants (UPPER_CASE values that are not callable; e.g. check
  names, ``TABLES``). Never a function, and never a class that does work (``Target``,
  ``Cipher``, readers and writers): when an adapter needs one, the front door gets an
  operation for it.
- Import names from the module that defines them; ``engine.operations`` itself
  re-exports nothing.
"""

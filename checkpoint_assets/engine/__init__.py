"""The plain-Python migration engine. Nothing in this package imports Dagster.

Data flows one way: SQLite source -> export file -> PostgreSQL batches -> verification;
the way back is the same shape reversed. One subpackage per capability: ``core`` (what
every other one shares), ``export``, ``load``, ``verify``, ``sync``, ``rollback``. The
front door of typed requests and reports is the ``operations`` package, beside them: the CLI and
the Dagster assets call it (see its docstring for what else they may import).
"""

"""The engine's front door: one typed request in, one typed report out, per operation.

One module per capability, imported from where it is defined (this package re-exports
nothing): ``migration`` (export, load, verify and the per-batch steps of a Dagster run),
``live`` (sync, cutover; ``cutover_rounds`` is the cutover's wait), ``way_back``
(export_postgres, restore, restore_batch, verify_rollback, rollback), ``contract``
(CONTRACT and what the operations share).
Requests carry plain values (paths, a DSN, the AES key) so an adapter needs no engine type
to build one; secrets stay out of ``repr``. Every operation runs without an orchestrator;
errors a user can cause raise MigrationError (or a subclass) with what to do.
"""

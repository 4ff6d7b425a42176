"""The plain-Python migration engine. Nothing in this package imports Dagster.

Data flows one way: SQLite source -> export file -> PostgreSQL batches -> verification.
"""

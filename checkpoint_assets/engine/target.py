"""Connections to the target PostgreSQL, with the DSN's password kept out of every message."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from checkpoint_assets.engine.errors import MigrationError

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
CONNECT_TIMEOUT_SECONDS = 10


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, safe for logs, metadata and error messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    params.pop("password", None)
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    user = params.get("user", "")
    dbname = params.get("dbname", "")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"


def scrub(text: str, dsn: str) -> str:
    """Remove the DSN's password (and any password= setting) from a message."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        text = text.replace(str(password), "***")
    text = re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


class TargetUnreachableError(MigrationError):
    """The target PostgreSQL refused or did not answer the connection."""


class Target:
    """Where the migration writes: a DSN and an optional schema for PostgresSaver's tables."""

    def __init__(self, dsn: str, schema: str | None = None) -> None:
        self.dsn = dsn
        self.schema = schema or None

    @property
    def display(self) -> str:
        """The target without its password, for messages."""
        return redact_dsn(self.dsn) + (f" schema {self.schema}" if self.schema else "")

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """Open a connection whose search_path starts with the target schema."""
        try:
            conninfo = make_conninfo(self.dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except psycopg.ProgrammingError:
            raise MigrationError("The target DSN cannot be parsed.",
                                 "Use postgresql://user:password@host:port/dbname.") from None
        try:
            conn = psycopg.connect(conninfo, autocommit=autocommit)
        except psycopg.OperationalError as exc:
            raise TargetUnreachableError(
                f"Cannot connect to the target {self.display}: "
                f"{scrub(str(exc).strip(), self.dsn)}",
                "Check host, port, database name, user and password (set them in the DSN "
                "environment variable), and that the server accepts connections.",
            ) from None
        try:
            if self.schema:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
                if not autocommit:
                    conn.commit()
            yield conn
        finally:
            conn.close()

    def setup(self) -> None:
        """Create (or upgrade) PostgresSaver's tables with the library's own migrations.

        Uses an autocommit connection: some of PostgresSaver's migrations run
        CREATE INDEX CONCURRENTLY, which cannot run inside a transaction.
        """
        with self.connect(autocommit=True) as conn:
            try:
                if self.schema:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(self.schema)))
                    conn.execute(sql.SQL("SET search_path TO {}").format(
                        sql.Identifier(self.schema)))
                PostgresSaver(conn).setup()  # type: ignore[arg-type]
            except psycopg.errors.InsufficientPrivilege as exc:
                raise MigrationError(
                    f"The target user may not create PostgresSaver's tables in "
                    f"{self.display}: {scrub(str(exc).strip(), self.dsn)}",
                    "Grant CREATE on the database/schema to this user, or have an owner run "
                    "`checkpoint-assets setup-target` (or PostgresSaver.setup()) once.",
                ) from None
            except psycopg.Error as exc:
                raise MigrationError(
                    f"Setting up PostgresSaver's tables in {self.display} failed: "
                    f"{scrub(str(exc).strip(), self.dsn)}",
                    "Check the database's state; the library's own migrations failed.",
                ) from None

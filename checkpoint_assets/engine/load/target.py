"""Connections to the target PostgreSQL, with the DSN's password kept out of every message."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from checkpoint_assets.engine.core.errors import FailureKind, MigrationError

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
MIGRATIONS_TABLE = "checkpoint_migrations"
# PostgresSaver's tables: their columns (with the type COPY sends) and primary keys.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "checkpoints": (
        ("thread_id", "text"), ("checkpoint_ns", "text"), ("checkpoint_id", "text"),
        ("parent_checkpoint_id", "text"), ("checkpoint", "jsonb"), ("metadata", "jsonb"),
    ),
    "checkpoint_blobs": (
        ("thread_id", "text"), ("checkpoint_ns", "text"), ("channel", "text"),
        ("version", "text"), ("type", "text"), ("blob", "bytea"),
    ),
    "checkpoint_writes": (
        ("thread_id", "text"), ("checkpoint_ns", "text"), ("checkpoint_id", "text"),
        ("task_id", "text"), ("task_path", "text"), ("idx", "int4"), ("channel", "text"),
        ("type", "text"), ("blob", "bytea"),
    ),
}
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("thread_id", "checkpoint_ns", "checkpoint_id"),
    "checkpoint_blobs": ("thread_id", "checkpoint_ns", "channel", "version"),
    "checkpoint_writes": ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
}
# The schema version PostgresSaver.setup() leaves: the index of its last migration.
LATEST_SCHEMA_VERSION = len(PostgresSaver.MIGRATIONS) - 1
# What loading needs on tables an owner set up: read the version, read and add rows.
REQUIRED_PRIVILEGES = ((MIGRATIONS_TABLE, "SELECT"),
                       *((table, privilege) for table in TABLES
                         for privilege in ("SELECT", "INSERT")))
CONNECT_TIMEOUT_SECONDS = 10
# Where the user gives a DSN, by the part it plays (the rollback reads from PostgreSQL).
DSN_OPTIONS = {"target": "--target or $CHECKPOINT_ASSETS_TARGET_DSN",
               "source": "--source-dsn, else $CHECKPOINT_ASSETS_TARGET_DSN"}
# A table is analyzed again once the rows changed since its last ANALYZE reach this share of
# the rows it had then (1.0: it doubled), and at least STATISTICS_MIN_ROWS: a geometric
# schedule, so a load of N rows analyzes each table about log2(N) times.
STATISTICS_GROWTH = 1.0
STATISTICS_MIN_ROWS = 1000
# libpq's wording when the server rejects the login itself (not the network).
AUTHENTICATION_FAILURES = ("authentication failed", "no password supplied")
# PostgreSQL's wording when the role's CONNECTION LIMIT, or the server's max_connections
# (less the slots reserved for superusers), is used up.
ROLE_LIMIT_REACHED = "too many connections for role"
SERVER_SLOTS_FULL = ("remaining connection slots are reserved", "too many clients already")
# A connection this process just closed may still count against the limit for a moment.
CONNECTION_LIMIT_RETRIES = 5
CONNECTION_LIMIT_RETRY_SECONDS = 0.2


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
        # Only where it stands alone: a password that is also a common word ("postgres")
        # must not garble "postgresql://" or every other word of the message.
        text = re.sub(rf"(?<!\w){re.escape(str(password))}(?!\w)", "***", text)
    text = re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


class TargetUnreachableError(MigrationError):
    """The target PostgreSQL refused or did not answer the connection."""

    kind = FailureKind.TRANSIENT  # worth retrying later: the server may come back


class TargetAuthenticationError(MigrationError):
    """The target PostgreSQL rejected the DSN's user name or password.

    Not a TargetUnreachableError: retrying with the same credentials cannot succeed.
    """


class TargetConnectionLimitError(MigrationError):
    """The target refused a connection because the role's or the server's connection limit
    is reached. Not a TargetUnreachableError: waiting for minutes does not free slots that
    this tool's own workers hold."""


class Target:
    """PostgresSaver's tables in PostgreSQL: a DSN and an optional schema; the migration's
    target, or a rollback's source (``role``, as messages name it)."""

    def __init__(self, dsn: str, schema: str | None = None, role: str = "target") -> None:
        self.dsn = dsn
        self.schema = schema or None
        self.role = role  # how messages name it: the migration's target, a rollback's source

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
            raise MigrationError(f"The {self.role} DSN cannot be parsed.",
                                 "Use postgresql://user:password@host:port/dbname.") from None
        conn = self._open(conninfo, autocommit)
        try:
            if self.schema:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
                if not autocommit:
                    conn.commit()
            yield conn
        finally:
            conn.close()

    def _open(self, conninfo: str, autocommit: bool) -> psycopg.Connection:
        """A new connection, or a MigrationError that names why there is none."""
        for attempt in range(CONNECTION_LIMIT_RETRIES + 1):
            try:
                return psycopg.connect(conninfo, autocommit=autocommit)
            except psycopg.OperationalError as exc:
                reason = scrub(str(exc).strip(), self.dsn)
                limited = ROLE_LIMIT_REACHED in reason or any(
                    marker in reason for marker in SERVER_SLOTS_FULL)
                if not limited or attempt == CONNECTION_LIMIT_RETRIES:
                    raise self._connect_error(reason) from None
                time.sleep(CONNECTION_LIMIT_RETRY_SECONDS)
        raise AssertionError("not reached")  # the last attempt returns or raises

    def _connect_error(self, reason: str) -> MigrationError:
        if any(marker in reason for marker in AUTHENTICATION_FAILURES):
            return TargetAuthenticationError(
                f"The {self.role} {self.display} rejected the login (authentication "
                f"failed): {reason}",
                f"Check the user name and password in the {self.role} DSN ("
                f"{DSN_OPTIONS[self.role]}; percent-encode special characters in a "
                "postgresql:// URL), and that pg_hba.conf lets this user connect with a "
                "password.",
            )
        if ROLE_LIMIT_REACHED in reason:
            return TargetConnectionLimitError(
                f"The {self.role} {self.display} refused a connection: the role's connection "
                f"limit is reached ({reason}). checkpoint-assets opens one connection per "
                "worker process; other sessions of the role count too. Nothing more was "
                "written.",
                "Run with one worker (--workers 1, or CHECKPOINT_ASSETS_WORKERS=1 for "
                "migrate and backfill), close the role's other sessions, or raise the limit "
                "(ALTER ROLE ... CONNECTION LIMIT n); then run the command again "
                "(backfill after migrate).",
            )
        if any(marker in reason for marker in SERVER_SLOTS_FULL):
            return TargetConnectionLimitError(
                f"The {self.role} server {self.display} refused a connection: all its "
                f"connection slots are in use (max_connections; {reason}). Nothing more "
                "was written.",
                "Run with fewer workers (--workers 1, or CHECKPOINT_ASSETS_WORKERS=1), close "
                "other sessions, or raise max_connections on the server; then run the "
                "command again (backfill after migrate).",
            )
        return TargetUnreachableError(
            f"Cannot connect to the {self.role} {self.display}: {reason}",
            "Check host, port, database name, user and password (set them in the DSN "
            "environment variable), and that the server accepts connections.",
        )

    def setup(self, conn: psycopg.Connection | None = None) -> None:
        """Create (or upgrade) PostgresSaver's tables with the library's own migrations.

        Raises MigrationError, before anything is written, when the target's
        ``checkpoint_migrations`` records a version newer than this library knows (it was
        set up by a newer langgraph-checkpoint-postgres), or when the tables are up to date
        but the user may not read or add rows to them. Tables already at the latest version
        are left alone, so a user without CREATE privilege can load into tables an owner
        set up. Uses an autocommit connection (``conn`` if given, e.g. one that holds a
        lock; else its own): some of PostgresSaver's migrations run CREATE INDEX
        CONCURRENTLY, which cannot run inside a transaction.
        """
        if conn is None:
            with self.connect(autocommit=True) as own:
                self.setup(own)
            return
        try:
            version = self._schema_version_on(conn)
            if version is not None and version > LATEST_SCHEMA_VERSION:
                raise MigrationError(
                    f"PostgresSaver's tables in {self.display} are at schema version "
                    f"{version} ({MIGRATIONS_TABLE}), newer than the version "
                    f"{LATEST_SCHEMA_VERSION} this tool's langgraph-checkpoint-postgres "
                    f"{_library_version()} knows: a newer langgraph-checkpoint-postgres "
                    "set them up. Nothing was written.",
                    "Upgrade langgraph-checkpoint-postgres in this tool's environment "
                    "(its pin in pyproject.toml) to the version your application runs, "
                    "then import again; or import into a database or schema of its own.",
                )
            if version == LATEST_SCHEMA_VERSION:
                self._require_privileges(conn)
                return
            if self.schema:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(self.schema)))
                conn.execute(sql.SQL("SET search_path TO {}").format(
                    sql.Identifier(self.schema)))
            PostgresSaver(conn).setup()  # type: ignore[arg-type]
        except psycopg.errors.InsufficientPrivilege as exc:
            user = sql.Identifier(conn.info.user).as_string(conn)
            schema = sql.Identifier(self.schema or "public").as_string(conn)
            raise MigrationError(
                f"The target user {user} may not create or upgrade PostgresSaver's "
                f"tables in {self.display} ({scrub(_primary_message(exc), self.dsn)}); "
                "no checkpoint was written.",
                f"Either have an owner grant it: GRANT CREATE ON SCHEMA {schema} TO "
                f"{user}; (and CREATE on the database if the schema does not exist "
                "yet). Or have the schema's owner create the tables once, by running "
                "this import or PostgresSaver.setup() as the owner, and then run: "
                f"{_grant_statement(user)}",
            ) from None
        except psycopg.Error as exc:
            raise MigrationError(
                f"Setting up PostgresSaver's tables in {self.display} failed: "
                f"{scrub(str(exc).strip(), self.dsn)}",
                "Check the database's state; the library's own migrations failed.",
            ) from None

    def identity(self) -> str | None:
        """What identifies the target's tables beyond its DSN: a digest of the server's
        system identifier (``pg_control_system()``, set when the cluster was created),
        the database's oid and the oid and name of the schema holding ``checkpoints``;
        None when there is no ``checkpoints`` table (yet). A database dropped and created
        again under the same name, or a schema created again, has another identity; another
        DSN for the same database (another host name, user or password) has the same.
        """
        query = sql.SQL(
            "SELECT s.system_identifier, d.oid, n.oid, n.nspname "
            "FROM pg_control_system() s, pg_database d, pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE d.datname = current_database() AND c.oid = to_regclass({table})").format(
            table=sql.Literal("checkpoints"))
        try:
            with self.connect(autocommit=True) as conn:
                row = conn.execute(query).fetchone()
        except psycopg.Error as exc:
            raise MigrationError(
                f"Cannot read the identity of the {self.role} {self.display}: "
                f"{scrub(str(exc).strip(), self.dsn)}",
                "Check that the user may connect and run pg_control_system() (PostgreSQL "
                "allows it to every user by default).") from None
        if row is None:
            return None
        return hashlib.sha256("\x00".join(str(part) for part in row).encode()).hexdigest()

    def schema_version(self, conn: psycopg.Connection | None = None) -> int | None:
        """The version PostgresSaver's ``checkpoint_migrations`` records (None: no tables
        yet); LATEST_SCHEMA_VERSION means up to date. On ``conn`` if given."""
        if conn is not None:
            return self._schema_version_on(conn)
        with self.connect(autocommit=True) as own:
            return self._schema_version_on(own)

    def _schema_version_on(self, conn: psycopg.Connection) -> int | None:
        """The highest version in ``checkpoint_migrations`` (None: no table or no row)."""
        exists = conn.execute("SELECT to_regclass(%s)", (MIGRATIONS_TABLE,)).fetchone()
        if exists is None or exists[0] is None:
            return None
        self._require_privileges(conn, [(MIGRATIONS_TABLE, "SELECT")])
        row = conn.execute(sql.SQL("SELECT max(v) FROM {}").format(
            sql.Identifier(MIGRATIONS_TABLE))).fetchone()
        return None if row is None else row[0]

    def _require_privileges(
        self, conn: psycopg.Connection,
        required: Sequence[tuple[str, str]] = REQUIRED_PRIVILEGES,
    ) -> None:
        """Raise MigrationError naming every (table, privilege) the user lacks."""
        missing = conn.execute(
            "SELECT name, privilege FROM unnest(%s::text[], %s::text[]) AS r(name, privilege) "
            "WHERE NOT has_table_privilege(to_regclass(name), privilege)",
            ([name for name, _ in required], [privilege for _, privilege in required]),
        ).fetchall()
        if not missing:
            return
        user = sql.Identifier(conn.info.user).as_string(conn)
        lacking = ", ".join(f"{privilege} on {name}" for name, privilege in missing)
        raise MigrationError(
            f"The target user {user} lacks privileges on PostgresSaver's tables in "
            f"{self.display}: {lacking}. Nothing was written.",
            f"Have the tables' owner run: {_grant_statement(user)} Or import as the owner.",
        )


def refresh_statistics(conn: psycopg.Connection) -> list[str]:
    """ANALYZE those of PostgresSaver's tables that grew by STATISTICS_GROWTH since their
    last ANALYZE; return their names. Commits (ANALYZE runs in its own transaction).

    Without statistics the planner estimates ``thread_id = ANY(...)`` at half the table and
    scans it whole, so every batch would cost as much as the table holds; autovacuum is
    off on some servers and lags a bulk load on the others. Growth is read from the
    server's activity counters (one cheap query). Tables this user does not own are left
    alone (ANALYZE would only warn), and a table another loader is analyzing right now is
    skipped rather than waited for.
    """
    stale = [name for (name,) in conn.execute(
        "SELECT t.name FROM unnest(%s::text[]) AS t(name) "
        "JOIN pg_class c ON c.oid = to_regclass(t.name) "
        "WHERE pg_has_role(c.relowner, 'USAGE') "
        "AND pg_stat_get_mod_since_analyze(c.oid) >= greatest(%s, c.reltuples * %s)",
        (list(TABLES), STATISTICS_MIN_ROWS, STATISTICS_GROWTH))]
    for name in stale:
        conn.execute(sql.SQL("ANALYZE (SKIP_LOCKED) {}").format(sql.Identifier(name)))
    conn.commit()
    return stale


def refresh_statistics_of(target: Target) -> None:
    """:func:`refresh_statistics` on a connection of its own, at best effort: a failed
    ANALYZE leaves the planner's estimates as they were (slower queries, never different
    results), so it is no reason to fail the step that asked for it."""
    try:
        with target.connect() as conn:
            refresh_statistics(conn)
    except (MigrationError, psycopg.Error):
        pass


def _primary_message(exc: psycopg.Error) -> str:
    """The server's one-line message (no statement excerpt), or the whole text."""
    return exc.diag.message_primary or str(exc).strip()


def _grant_statement(user: str) -> str:
    """The GRANTs that let ``user`` (already quoted) load into tables an owner set up."""
    return (f"GRANT SELECT, INSERT ON {', '.join(TABLES)} TO {user}; "
            f"GRANT SELECT ON {MIGRATIONS_TABLE} TO {user};")


def _library_version() -> str:
    """The installed langgraph-checkpoint-postgres version, for messages."""
    try:
        return importlib.metadata.version("langgraph-checkpoint-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def thread_row_versions(conn: psycopg.Connection,
                        threads: Sequence[str]) -> dict[str, tuple[str, tuple[int, int, int]]]:
    """Per thread: a SHA-256 of the versions of its rows in each of PostgresSaver's tables,
    and its rows per table (checkpoints, blobs, writes).

    A row's version is its creating transaction and place (``xmin``, ``ctid``; hashed per
    table by PostgreSQL with md5). PostgreSQL never changes a stored row in place: an
    UPDATE, even to the same values, writes a new version with its own transaction id, and
    a DELETE or INSERT changes the set. What could change how the same versions read is in
    the digest too (:func:`tables_fingerprint`): each table's identity, file and column
    definitions (a renamed, dropped or added column; TRUNCATE, VACUUM FULL or CLUSTER give
    a new file), the database, and the transaction-id era (a 32-bit xmin could only come
    round again after 2^31 transactions). So while the digest stays the same, no change
    made through PostgreSQL reached the rows; damage below it (storage corruption, files
    edited directly) is not seen. Cheap: no value is read or hashed. Read in the caller's
    transaction: with rows a caller compared in the same snapshot, it certifies exactly
    those rows. Threads with no row are left out."""
    found: dict[str, list[Any]] = {}
    for position, table in enumerate(TABLES):
        query = sql.SQL(
            "SELECT thread_id, md5(string_agg(xmin::text || ':' || ctid::text, ',' "
            "ORDER BY ctid)), count(*) FROM {} WHERE thread_id = ANY(%s) "
            "GROUP BY thread_id").format(sql.Identifier(table))
        for thread_id, digest, rows in conn.execute(query, (list(threads),)):
            entry = found.setdefault(thread_id, [[""] * len(TABLES), [0] * len(TABLES)])
            entry[0][position], entry[1][position] = digest, rows
    tables = tables_fingerprint(conn) if found else ""
    return {thread_id: (hashlib.sha256(f"{tables}|{'/'.join(digests)}".encode()).hexdigest(),
                        (counts[0], counts[1], counts[2]))
            for thread_id, (digests, counts) in found.items()}


def tables_fingerprint(conn: psycopg.Connection) -> str:
    """What besides the row versions decides what PostgresSaver's tables read as: the
    database, each table's oid, file and columns (name, type, dropped, the default a
    column added without a rewrite gives old rows), and the era of 2^31 transaction ids
    the current snapshot is in."""
    row = conn.execute(
        "SELECT (SELECT oid FROM pg_database WHERE datname = current_database()), "
        "floor(pg_snapshot_xmin(pg_current_snapshot())::text::numeric / 2147483648)"
    ).fetchone()
    parts = [f"db {row[0]} era {row[1]}"]
    for table in TABLES:
        parts.append(str(conn.execute(
            "SELECT c.oid, pg_relation_filenode(c.oid), (SELECT string_agg(concat_ws(':', "
            "a.attnum, a.attname, a.atttypid, a.atttypmod, a.attisdropped, a.atthasmissing, "
            "a.attmissingval::text), ',' ORDER BY a.attnum) FROM pg_attribute a "
            "WHERE a.attrelid = c.oid AND a.attnum > 0) FROM pg_class c "
            "WHERE c.oid = to_regclass(%s)", (table,)).fetchone()))
    return hashlib.sha256("/".join(parts).encode()).hexdigest()

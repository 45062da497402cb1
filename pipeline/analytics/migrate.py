"""Versioned ClickHouse migrations: apply ``schemas/clickhouse/NNN_name.sql`` once each, in order.

Each file holds one or more statements; a statement ends with ``;`` at the end of a line
(so a ``;`` inside a line or a string never splits). ``--`` comment lines are allowed and
never end a statement. What ran is recorded in ``schema_migrations`` (version, name,
checksum, applied_at) in the client's current database.

ClickHouse DDL is not transactional: a file that fails half-way is not recorded, and the
next run re-executes it from the top. So write every statement re-runnable
(``CREATE TABLE IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``). Never edit an applied
file: a changed checksum is refused; add a new file instead. Run migrations from one
process at a time (the CLI or a start-up hook), not from every worker concurrently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.analytics.clickhouse import ClickHouse, ClickHouseError

logger = logging.getLogger(__name__)

ENV_DIRECTORY = "LLMPIPE_CLICKHOUSE_MIGRATIONS"
MIGRATIONS_TABLE = "schema_migrations"
_FILE_RE = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")

_CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


class MigrationError(Exception):
    """A migration could not be loaded, verified or applied; the message names the file."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str          # file stem, e.g. "001_usage"
    path: Path
    checksum: str      # sha256 of the file's bytes
    statements: tuple[str, ...]


def default_directory() -> Path:
    """``$LLMPIPE_CLICKHOUSE_MIGRATIONS`` or the repo's ``schemas/clickhouse``."""
    override = os.environ.get(ENV_DIRECTORY)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: each ends with ``;`` at the end of a line."""
    statements: list[str] = []
    current: list[str] = []

    def close() -> None:
        text = "\n".join(current).strip()
        current.clear()
        body = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        if body:
            statements.append(text)

    for line in sql.splitlines():
        stripped = line.rstrip()
        if stripped.endswith(";") and not stripped.lstrip().startswith("--"):
            current.append(stripped[:-1])
            close()
        else:
            current.append(line)
    close()
    return statements


def load_migrations(directory: Path | str | None = None) -> list[Migration]:
    """Every ``NNN_name.sql`` in ``directory`` by version; other ``.sql`` names are errors."""
    root = Path(directory) if directory is not None else default_directory()
    if not root.is_dir():
        raise MigrationError(f"migrations directory {root} does not exist (set {ENV_DIRECTORY})")
    migrations: list[Migration] = []
    seen: dict[int, Path] = {}
    for path in sorted(root.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files must be named NNN_name.sql")
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(f"{path}: version {version} is also used by {seen[version].name}")
        seen[version] = path
        data = path.read_bytes()
        try:
            statements = split_statements(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise MigrationError(f"{path}: not UTF-8 ({exc})") from None
        if not statements:
            raise MigrationError(f"{path}: no SQL statements")
        migrations.append(Migration(version, path.stem, path, hashlib.sha256(data).hexdigest(),
                                    tuple(statements)))
    migrations.sort(key=lambda m: m.version)
    return migrations


def applied_migrations(client: ClickHouse) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of what ``schema_migrations`` says was applied."""
    client.command(_CREATE_MIGRATIONS_TABLE)
    rows = client.query(
        f"SELECT version, argMax(name, applied_at), argMax(checksum, applied_at) "
        f"FROM {MIGRATIONS_TABLE} GROUP BY version").result_rows
    return {int(version): (name, checksum) for version, name, checksum in rows}


def apply_migrations(client: ClickHouse, directory: Path | str | None = None) -> list[str]:
    """Apply the migrations not yet recorded, in version order; returns their names.

    Verifies every already-applied file first: a changed checksum (or a renamed file for an
    applied version) raises :class:`MigrationError` naming the file, before anything runs.
    """
    migrations = load_migrations(directory)
    applied = applied_migrations(client)
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is None:
            continue
        name, checksum = recorded
        if name != migration.name:
            raise MigrationError(f"{migration.path}: version {migration.version} was applied "
                                 f"as {name}.sql; do not rename applied migrations")
        if checksum != migration.checksum:
            raise MigrationError(f"{migration.path}: changed after it was applied (checksum "
                                 f"{checksum[:12]} recorded, {migration.checksum[:12]} now); "
                                 "add a new migration instead of editing this one")
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        for index, statement in enumerate(migration.statements, start=1):
            try:
                client.command(statement)
            except ClickHouseError as exc:
                raise MigrationError(f"{migration.path}: statement {index} of "
                                     f"{len(migration.statements)} failed: {exc}") from exc
        client.insert(MIGRATIONS_TABLE, [[migration.version, migration.name, migration.checksum]],
                      column_names=["version", "name", "checksum"])
        logger.info("clickhouse.migration_applied version=%d name=%s database=%s",
                    migration.version, migration.name, client.database)
        done.append(migration.name)
    return done

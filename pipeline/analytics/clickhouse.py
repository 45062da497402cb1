"""One small client for the ledger: a ClickHouse server (``http(s)://``) or embedded chDB.

Callers get a :class:`ClickHouse` with ``query``/``command``/``insert``/``close`` and do not
care which backend is behind it. Errors come out as :class:`ClickHouseError` with any
password scrubbed; DSNs are only ever printed through :func:`redact_dsn`.

DSNs::

    chdb:///abs/path              embedded engine, data in that directory (created if missing)
    chdb:///abs/path?database=db  ... with a default database (or ``connect(..., database=)``)
    chdb://memory                 embedded engine, in memory
    http://user:pass@host:8123/db ClickHouse server (https:// likewise)

chDB facts, checked here on chdb 4.4 / ClickHouse 26.9 with clickhouse-connect 1.12
(``tests/unit/test_ledger_chdb.py::test_chdb_path_rules`` re-checks them in a subprocess):

- **One engine path per process at a time.** Opening a second, different path while any
  client on the first is still open fails ("EmbeddedServer already initialized with path
  ..."); :func:`connect` refuses it up front with a :class:`ClickHouseError` naming both.
- **Paths one after the other work**: close every client on path A, then path B opens
  (and A can be reopened later with its data intact).
- **Several clients on the same path at once work**; they share the engine (and its data).
  Each client has its own default database (USE state), so per-test databases on one
  shared path isolate tests cheaply.
- **Another process cannot open a path this process holds** ("Cannot lock file
  <path>/status. Another server instance in same directory is already running").

So tests use ONE session-scoped path for the whole run and a fresh database per test
(``tests/chdb_fixture.py``); a test that wants its own path must run in a subprocess.
There is no async chDB client: run calls in a thread (``asyncio.to_thread``). All chDB
calls in this process go through one lock, since they all reach the same engine.

Chaos switch (operators and tests): with ``LLMPIPE_CLICKHOUSE_FAULT_FILE=/some/path`` in the
environment, every INSERT and every new connection fails while that file exists, with the
error an unreachable server gives (``Connection refused``; an insert's through the driver's
own exception path), and works again once it is removed. Reads on a connected client are
left alone so the catch-up can be watched. For an
``http://`` DSN an outage can also be real (stop the server); for embedded chDB this is the
only way to take the store "down" without killing the process that owns it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any, ContextManager, Sequence
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError as _DriverError
from clickhouse_connect.driver.exceptions import DataError, OperationalError
from clickhouse_connect.driver.query import QueryResult

logger = logging.getLogger(__name__)

#: Serialises every call into the in-process chDB engine (one engine per process).
CHDB_LOCK = threading.RLock()

_MEMORY = ":memory:"
_MEMORY_NAMES = ("memory", _MEMORY)
_SECRET_PARAMS = ("password", "pass", "pwd", "access_token", "token", "secret")
_CODE_RE = re.compile(r"Code: (\d+)\.")

#: While the file this variable names exists, every connect and insert fails as if the server
#: were down.
FAULT_FILE_ENV = "LLMPIPE_CLICKHOUSE_FAULT_FILE"

# chDB path -> number of open ClickHouse wrappers on it (guarded by CHDB_LOCK).
_chdb_open: dict[str, int] = {}


class ClickHouseError(Exception):
    """A ClickHouse failure (connect, query, insert) with secrets scrubbed from the message.

    ``code`` is ClickHouse's numeric error code when the server reported one; ``data_error``
    says the driver refused a value before sending it (clickhouse-connect's DataError).
    """

    def __init__(self, message: str, code: int | None = None, data_error: bool = False):
        super().__init__(message)
        self.code = code
        self.data_error = data_error


def redact_dsn(dsn: str) -> str:
    """The DSN with its password (and any secret-looking query parameter) masked as ``***``."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable dsn>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if has_password else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs],
                          safe="*")
    if "://" not in dsn:
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # Rebuilt by hand: urlunsplit drops the empty host of chdb:///abs/path.
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


def _secrets(dsn: str) -> list[str]:
    """Every spelling of a secret in the DSN, for scrubbing error messages."""
    found: list[str] = []
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return [dsn]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        _, has_password, password = userinfo.partition(":")
        if has_password and password:
            found += [password, unquote(password), quote(unquote(password), safe="")]
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in _SECRET_PARAMS and value:
            found += [value, quote(value, safe="")]
    # Longest first, so a secret that contains another is replaced whole.
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _error(action: str, exc: BaseException, secrets: Sequence[str]) -> ClickHouseError:
    message = _scrub(f"{action}: {exc}", secrets)
    match = _CODE_RE.search(message)
    return ClickHouseError(message, int(match.group(1)) if match else None,
                           isinstance(exc, DataError))


class ClickHouse:
    """A clickhouse-connect client plus the locking and error hygiene its backend needs.

    Thread-safe: chDB calls are serialised by :data:`CHDB_LOCK`; HTTP clients are created
    without a session id, which makes concurrent calls safe in clickhouse-connect.
    """

    def __init__(self, client: Any, *, backend: str, dsn: str, chdb_path: str | None = None):
        self._client = client
        self.backend = backend
        #: The DSN with secrets masked: safe to print.
        self.dsn = redact_dsn(dsn)
        self._secrets = _secrets(dsn)
        self._chdb_path = chdb_path
        self._lock: ContextManager[Any] = CHDB_LOCK if backend == "chdb" else nullcontext()
        self._closed = False
        self._fault_file = os.environ.get(FAULT_FILE_ENV) or None

    @property
    def database(self) -> str | None:
        return self._client.database

    @property
    def closed(self) -> bool:
        return self._closed

    def query(self, sql: str,
              parameters: dict[str, Any] | Sequence[Any] | None = None) -> QueryResult:
        """Run a SELECT; the result is fully read before the lock is released.

        ``parameters`` use clickhouse-connect binding: ``%(name)s`` is formatted client
        side (safe quoting, any size), ``{name:Type}`` is bound by the server.
        """
        self._check_open()
        with self._lock:
            try:
                result = self._client.query(sql, parameters=parameters)
                result.result_rows  # materialise while we hold the engine
                return result
            except (_DriverError, OSError) as exc:
                raise _error("query failed", exc, self._secrets) from None

    def command(self, sql: str, parameters: dict[str, Any] | Sequence[Any] | None = None) -> Any:
        """Run a statement (DDL, INSERT ... SELECT, OPTIMIZE); returns its scalar result if any."""
        self._check_open()
        with self._lock:
            try:
                return self._client.command(sql, parameters=parameters)
            except (_DriverError, OSError) as exc:
                raise _error("command failed", exc, self._secrets) from None

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str],
               settings: dict[str, Any] | None = None) -> int:
        """Insert ``rows`` (row-oriented) in one INSERT; returns the rows written."""
        self._check_open()
        with self._lock:
            try:
                self._injected_outage()
                summary = self._client.insert(table, rows, column_names=list(column_names),
                                              settings=settings)
            except (_DriverError, OSError) as exc:
                raise _error(f"insert into {table} failed", exc, self._secrets) from None
        return int(getattr(summary, "written_rows", len(rows)) or 0)

    def close(self) -> None:
        """Release the connection (idempotent). The last close on a chDB path frees the engine."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            try:
                self._client.close()
            finally:
                if self._chdb_path is not None:
                    remaining = _chdb_open.get(self._chdb_path, 1) - 1
                    if remaining > 0:
                        _chdb_open[self._chdb_path] = remaining
                    else:
                        _chdb_open.pop(self._chdb_path, None)

    def _injected_outage(self) -> None:
        """The chaos switch (module doc): fail like an unreachable server while the file exists."""
        if self._fault_file and os.path.exists(self._fault_file):
            raise OperationalError(
                f"Error {self.backend}: Failed to establish a new connection: [Errno 111] "
                f"Connection refused (fault injected: {self._fault_file} exists)")

    def _check_open(self) -> None:
        if self._closed:
            raise ClickHouseError(f"client for {self.dsn} is closed")

    def __enter__(self) -> ClickHouse:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ClickHouse(backend={self.backend!r}, dsn={self.dsn!r}, database={self.database!r})"


def connect(dsn: str, *, database: str | None = None,
            settings: dict[str, Any] | None = None) -> ClickHouse:
    """A :class:`ClickHouse` for a ``chdb://`` or ``http(s)://`` DSN (see the module doc).

    ``database`` overrides the DSN's database. Raises :class:`ClickHouseError` for an
    unsupported scheme, a second chDB path while one is open, or a failed connection.
    """
    fault_file = os.environ.get(FAULT_FILE_ENV)
    if fault_file and os.path.exists(fault_file):      # the chaos switch: a server that is down
        raise ClickHouseError(f"cannot connect to {redact_dsn(dsn)}: Connection refused "
                              f"(fault injected: {fault_file} exists)")
    try:
        scheme = urlsplit(dsn).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme == "chdb":
        return _connect_chdb(dsn, database, settings)
    if scheme in ("http", "https"):
        return _connect_http(dsn, database, settings)
    raise ClickHouseError(
        f"unsupported ClickHouse DSN scheme {scheme or '(none)'!r} in {redact_dsn(dsn)}: "
        "expected chdb:///abs/path, chdb://memory, http://user:pass@host:8123/db or https://...")


def _chdb_location(dsn: str) -> tuple[str, str | None]:
    """(engine path or ':memory:', database from the DSN) for a chdb:// DSN."""
    parts = urlsplit(dsn)
    query_db = dict(parse_qsl(parts.query)).get("database") or None
    if parts.netloc:
        if parts.netloc not in _MEMORY_NAMES:
            raise ClickHouseError(
                f"chdb DSN {redact_dsn(dsn)} names {parts.netloc!r} as a host: use "
                "chdb:///absolute/path (three slashes) or chdb://memory")
        path_db = unquote(parts.path.strip("/")) or None
        return _MEMORY, query_db or path_db
    path = unquote(parts.path)
    if not path or not path.startswith("/"):
        raise ClickHouseError(
            f"chdb DSN {redact_dsn(dsn)} needs an absolute path: chdb:///abs/path")
    return os.path.realpath(path), query_db


def _connect_chdb(dsn: str, database: str | None, settings: dict[str, Any] | None) -> ClickHouse:
    path, dsn_database = _chdb_location(dsn)
    database = database or dsn_database
    with CHDB_LOCK:
        others = [p for p in _chdb_open if p != path]
        if others:
            raise ClickHouseError(
                f"chDB engine in this process is already open at {others[0]}; cannot open "
                f"{path} at the same time (one engine path per process: close every client "
                "on the first path, or use a separate database on the same path)")
        if path != _MEMORY:
            Path(path).mkdir(parents=True, exist_ok=True)
        try:
            client = clickhouse_connect.get_client(
                interface="chdb", path=None if path == _MEMORY else path,
                database=database, settings=dict(settings or {}))
        except (_DriverError, OSError) as exc:
            raise _error(f"cannot open chDB at {path}", exc, _secrets(dsn)) from None
        _chdb_open[path] = _chdb_open.get(path, 0) + 1
    logger.info("clickhouse.connected backend=chdb path=%s database=%s", path, database)
    return ClickHouse(client, backend="chdb", dsn=dsn, chdb_path=path)


def _connect_http(dsn: str, database: str | None, settings: dict[str, Any] | None) -> ClickHouse:
    secrets = _secrets(dsn)
    try:
        client = clickhouse_connect.get_client(
            dsn=dsn, database=database, settings=dict(settings or {}),
            autogenerate_session_id=False)
    except (_DriverError, OSError, ValueError) as exc:
        raise _error(f"cannot connect to ClickHouse at {redact_dsn(dsn)}", exc, secrets) from None
    logger.info("clickhouse.connected backend=http dsn=%s database=%s",
                redact_dsn(dsn), client.database)
    return ClickHouse(client, backend="http", dsn=dsn)

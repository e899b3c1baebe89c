"""Coordination of many processes on PostgreSQL: the journal of record, the account's
parallel-task quota, and the connections they share.

Loaded only when a database URL is given (``KlingClient(database_url=...)`` or
``KLING_DATABASE_URL``); asyncpg is imported here and nowhere else. Install it with
``pip install 'kling-async[postgres]'``.
"""

from __future__ import annotations

import json
import uuid
import weakref
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import anyio

from .._clock import Clock, SystemClock
from ..errors import ConfigurationError
from ..journal import JournalError
from ..models import TaskKind
from ..policies import CompletionTimes
from ..telemetry import NO_TELEMETRY, _Off
from ._rate import SharedRateLimiter
from ._schema import SCHEMA_VERSION, prepare
from .journal import PostgresJournal

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - the extra is installed wherever tests run
    raise ConfigurationError(
        "A database URL needs the asyncpg driver: pip install 'kling-async[postgres]'."
    ) from exc

__all__ = [
    "DEFAULT_LEASE",
    "SCHEMA_VERSION",
    "Coordination",
    "PostgresJournal",
    "SharedRateLimiter",
]

#: Seconds a claim lasts without renewal: a process silent for this long is taken for dead.
DEFAULT_LEASE = 30.0
_HINTS = "kling_hints"
_TAKEN = "kling_taken"
_GRANTS = "kling_grants"
_ENDED = "kling_ended"
_SETTLED = "kling_settled"


class Coordination:
    """The processes of one Kling account meeting in one database.

    `account` names the account whose limits are shared (the client derives it from the
    credentials); `parallel_tasks` is its quota of tasks in flight (None keeps the one
    stored, or none); `lease` how long a silent process keeps its claims.
    """

    def __init__(
        self,
        url: str,
        *,
        account: str,
        parallel_tasks: int | None = None,
        lease: float = DEFAULT_LEASE,
        clock: Clock | None = None,
    ) -> None:
        if parallel_tasks is not None and parallel_tasks < 1:
            raise ConfigurationError(f"parallel_tasks must be at least 1, not {parallel_tasks}")
        if lease <= 0:
            raise ConfigurationError(f"lease must be positive, not {lease!r}")
        self.url = url
        self.where = _without_password(url)
        self.account = account
        self.parallel_tasks = parallel_tasks
        self.lease = lease
        #: How often leases are renewed and waited-for keys looked at.
        self.tick = min(lease / 3, 1.0)
        #: How often a wait that a NOTIFY ends reads the database anyway, in case the
        #: notification was lost.
        self.recheck = lease / 2
        #: Where the waits for the account's slots are reported (the client's telemetry).
        self.telemetry: _Off = NO_TELEMETRY
        #: How long tasks take, by kind, as this process learned it (the client's record):
        #: the durations other processes see end are added to it as they are heard.
        self.completion: dict[TaskKind, CompletionTimes] = {}
        self.clock = clock or SystemClock()
        #: Statements sent to the database (each one round trip), for benchmarks.
        self.round_trips = 0
        #: Of those, the ones sent on a timer (lease renewals and looks at awaited keys).
        self.periodic_round_trips = 0
        self._pool: Any = None
        self._listener: Any = None
        self._journals: weakref.WeakSet[PostgresJournal] = weakref.WeakSet()
        self._lock = anyio.Lock()
        #: Names this process in what it tells the others (to skip its own news).
        self.origin = uuid.uuid4().hex[:16]
        self._receivers: list[Any] = []
        #: The channels' names in this schema (`kling_channel`), known once connected.
        self._scope = ""

    def __repr__(self) -> str:
        return f"<Coordination {self.where} account={self.account!r}>"

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self) -> Self:
        """Connect, create the schema on first use (or check its version); idempotent."""
        async with self._lock:
            if self._pool is None:
                await self._connect()
        return self

    async def _connect(self) -> None:
        try:
            pool = await asyncpg.create_pool(self.url, min_size=1, max_size=10)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unreachable(self.where, exc) from None
        try:
            async with pool.acquire() as connection:
                await prepare(connection, self.where)
                await connection.execute(
                    "INSERT INTO kling_account (name, quota) VALUES ($1, $2) "
                    "ON CONFLICT (name) DO UPDATE "
                    "SET quota = coalesce(EXCLUDED.quota, kling_account.quota)",
                    self.account,
                    self.parallel_tasks,
                )
                self._scope = await connection.fetchval("SELECT kling_channel('')")
            listener = await pool.acquire()
            for channel, heard in self._channels():
                await listener.add_listener(channel, heard)
        except BaseException:
            await pool.close()
            raise
        self._pool, self._listener = pool, listener

    async def close(self) -> None:
        """Close the connections; idempotent."""
        with anyio.CancelScope(shield=True):
            pool, self._pool = self._pool, None
            listener, self._listener = self._listener, None
            if listener is not None:
                for channel, heard in self._channels():
                    await listener.remove_listener(channel, heard)
                await pool.release(listener)
            if pool is not None:
                await pool.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def journal(self, namespace: str) -> PostgresJournal:
        """The journal of `namespace` (a batch's name, an application's own)."""
        if not namespace:
            raise ConfigurationError("A journal's namespace must be a non-empty name.")
        journal = PostgresJournal(self, namespace)
        self._journals.add(journal)
        return journal

    def _channels(self) -> list[tuple[str, Any]]:
        heard = [
            (_HINTS, self._on_hint),
            (_TAKEN, self._on_taken),
            (_GRANTS, self._on_grant),
            (_ENDED, self._on_ended),
            (_SETTLED, self._on_settled),
        ]
        return [(self._channel(name), on) for name, on in heard]

    def _channel(self, name: str) -> str:
        """`name` as this schema's channel: the installations in the database's other schemas
        (each its own set of tables) never hear what is said in this one."""
        return name + self._scope

    def request_rate(self, rate: float) -> SharedRateLimiter:
        """The account's request rate, `rate` a second in all processes together."""
        return SharedRateLimiter(self, rate, clock=self.clock)

    # -- the account's slots and the keys of journals ----------------------------------------

    def _on_taken(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        """Another process took a key: a journal of its namespace skips it without asking."""
        owner, namespace, key = json.loads(str(payload))
        for journal in self._journals:
            if journal.namespace == namespace and journal.owner != owner:
                journal.taken_elsewhere(key)

    def _on_grant(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        """A queued intent of one of this process's journals got its slot."""
        owner, _namespace, key = json.loads(str(payload))
        for journal in self._journals:
            if journal.owner == owner:
                journal.granted(key)

    def _on_settled(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        """A key's holder recorded its task or outcome: its waiters read it now."""
        _owner, namespace, key = json.loads(str(payload))
        for journal in self._journals:
            if journal.namespace == namespace:
                journal.heard_settled(key)

    def _on_ended(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        """Another process saw a task end: its duration joins what this one learned, so every
        process polls near the end of its tasks as soon as any few tasks of the account ended
        (each learning alone, a process running a W-th of the account's tasks polls blind W
        times longer). Only the durations of this process's account count: other accounts
        may share the schema, with other plans and loads."""
        origin, kind, seconds, account = [*str(payload).split(" ", 3), "", "", ""][:4]
        if origin == self.origin or account != self.account:
            return
        try:
            learned = self.completion.setdefault(TaskKind(kind), CompletionTimes())
            learned.observe(float(seconds))
        except ValueError:
            return  # a kind or a number this version does not know

    async def slots_in_use(self) -> int:
        """Tasks of this account that hold a slot now."""
        used = await self.fetchval(
            "SELECT count(*) FROM kling_entry WHERE account = $1 AND holds_slot", self.account
        )
        return int(used)

    # -- callbacks between processes -------------------------------------------------------

    def share_hints(self, receiver: Any) -> None:
        """Pass the terminal hints `receiver` takes to every process of the database, and
        those they take to `receiver` (a `CallbackReceiver`): a callback that reaches any
        replica wakes the watcher of its task wherever it waits."""
        receiver.relay = self.publish_hint
        if receiver not in self._receivers:
            self._receivers.append(receiver)

    async def publish_hint(self, task_id: str, status: str) -> None:
        """Tell every other process that a callback said `task_id` ended."""
        channel, payload = self._channel(_HINTS), f"{self.origin} {status} {task_id}"
        await self.execute("SELECT pg_notify($1, $2)", channel, payload)

    def _on_hint(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        origin, _, rest = str(payload).partition(" ")
        status, _, task_id = rest.partition(" ")
        if origin == self.origin or not task_id:
            return  # this process's own receiver already took it
        for receiver in self._receivers:
            receiver.hint(task_id, status)

    # -- statements -------------------------------------------------------------------------

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._call("execute", query, *args)

    async def fetch(self, query: str, *args: Any) -> Any:
        return await self._call("fetch", query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._call("fetchrow", query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._call("fetchval", query, *args)

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        if self._pool is None:
            raise JournalError(
                self.where,
                f"The database {self.where} is not open; use the client's `async with`.",
            )
        self.round_trips += 1
        try:
            return await getattr(self._pool, method)(query, *args)
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
            raise _unreachable(self.where, exc) from None
        except asyncpg.PostgresError as exc:
            raise JournalError(
                self.where,
                f"The database {self.where} refused a statement ({exc}); nothing more is "
                "sent until it is fixed.",
            ) from exc


def _without_password(url: str) -> str:
    """The URL as it may be shown: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _unreachable(where: str, exc: BaseException) -> JournalError:
    reason = str(exc) or type(exc).__name__
    return JournalError(
        where,
        f"The database {where} cannot be reached ({reason}); nothing was sent that could "
        "not be journaled. Check the URL (KLING_DATABASE_URL) and that the server runs.",
    )

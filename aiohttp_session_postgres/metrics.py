"""Prometheus metrics for the storage (the ``aiohttp-session-postgres[metrics]`` extra, which
installs prometheus-client; nothing else in the library imports it)::

    from aiohttp_session_postgres.metrics import PrometheusMetrics

    storage = PostgresStorage(pool, ..., metrics=PrometheusMetrics())  # registers in REGISTRY
    app.cleanup_ctx.append(storage.metrics_sampler(interval=60))      # the gauges

Metrics (prefix ``aiohttp_session_``; counters count what this process did):

==========================================  =====================================================
``aiohttp_session_events_total{event,reason}``   lifecycle events: ``created``, ``renewed``,
                                                 ``ended`` (reason ``logout``), ``revoked`` (reason
                                                 as the event's), ``expired`` (``found_at_load``)
``aiohttp_session_loads_total{outcome}``         session look-ups: ``cache_hit``, ``database``,
                                                 ``unknown``, ``undecryptable``, ``bad_signature``
``aiohttp_session_unavailable_total{cause}``     operations given up, each a 503: ``timeout``,
                                                 ``connection_lost``, ``read_only``, ``schema``,
                                                 ``unreachable``
``aiohttp_session_pool_waits_total``             operations that found every pool connection busy
``aiohttp_session_pool_wait_seconds_total``      the seconds those waited in all
``aiohttp_session_listener_lost_total{listener}``  LISTEN connections lost or refused (``cache``,
                                                 ``events``): each is retried
``aiohttp_session_swept_rows_total``             expired rows the sweeper deleted
``aiohttp_session_sweep_seconds``                sweep passes' durations (histogram)
``aiohttp_session_live``                         live sessions in the table, counted every
                                                 sampler interval (gauge; the latest count)
``aiohttp_session_cache_enabled``                1 when this process's session cache serves reads,
                                                 0 when it is off or its listener is down (gauge)
``aiohttp_session_cache_entries``                sessions this process's cache holds (gauge)
``aiohttp_session_cache_bytes``                  bytes it accounts (gauge)
==========================================  =====================================================

Several processes (gunicorn workers): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
before they start, serve a registry with ``prometheus_client.multiprocess.MultiProcessCollector``
and call ``multiprocess.mark_process_dead(pid)`` when a worker exits (prometheus-client's
multiprocess mode); the gauges' modes are set for it: the cache's have a ``pid`` label per live
process (sum or min them in PromQL), ``live`` is the latest count of any live process.
"""

from __future__ import annotations

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - the extra not installed
    raise ImportError(
        "aiohttp_session_postgres.metrics needs prometheus-client: pip install 'aiohttp-session-postgres[metrics]'"
    ) from exc

from .hooks import SessionEvent
from .observer import (
    CAUSE_CONNECTION_LOST,
    CAUSE_READ_ONLY,
    CAUSE_SCHEMA,
    CAUSE_TIMEOUT,
    CAUSE_UNREACHABLE,
    LOAD_BAD_SIGNATURE,
    LOAD_CACHE_HIT,
    LOAD_DATABASE,
    LOAD_UNDECRYPTABLE,
    LOAD_UNKNOWN,
)

PREFIX = "aiohttp_session"
_REASONS = frozenset(
    {"", "logout", "max_sessions_per_user", "end_session", "end_other_sessions", "end_all_sessions", "found_at_load"}
)
_OUTCOMES = (LOAD_CACHE_HIT, LOAD_DATABASE, LOAD_UNKNOWN, LOAD_UNDECRYPTABLE, LOAD_BAD_SIGNATURE)
_CAUSES = (CAUSE_TIMEOUT, CAUSE_CONNECTION_LOST, CAUSE_READ_ONLY, CAUSE_SCHEMA, CAUSE_UNREACHABLE)


class PrometheusMetrics:
    """The storage's metrics in a prometheus-client registry (the module's docstring lists them).

    :param registry: where to register them (prometheus-client's global ``REGISTRY`` by
        default); one PrometheusMetrics per registry.
    :param namespace: the names' prefix.
    :raises ValueError: when `registry` already holds metrics of that `namespace` (a second
        PrometheusMetrics, an app made twice in one process): the message says what to pass.
    """

    def __init__(self, *, registry: CollectorRegistry | None = REGISTRY, namespace: str = PREFIX) -> None:
        def name(suffix: str) -> str:
            return f"{namespace}_{suffix}"

        try:  # the first to register: a second PrometheusMetrics in one registry fails here
            self.events = Counter(name("events"), "Session lifecycle events", ["event", "reason"], registry=registry)
        except ValueError as exc:
            raise ValueError(
                f"the session metrics ({namespace}_*) are already in this registry: one PrometheusMetrics"
                " per registry (for a second storage in one process, or an app built again in a test,"
                " pass registry=prometheus_client.CollectorRegistry() or another namespace)"
            ) from exc
        loads = Counter(name("loads"), "Session look-ups by outcome", ["outcome"], registry=registry)
        unavailable = Counter(
            name("unavailable"), "Database operations given up (HTTP 503) by cause", ["cause"], registry=registry
        )
        # Children bound once: a load costs a dict look-up and an increment, nothing more.
        self._loads = {outcome: loads.labels(outcome) for outcome in _OUTCOMES}
        self._unavailable = {cause: unavailable.labels(cause) for cause in _CAUSES}
        self._pool_waits = Counter(name("pool_waits"), "Operations that waited for a connection", registry=registry)
        self._pool_wait_seconds = Counter(
            name("pool_wait_seconds"), "Seconds operations waited for a connection", registry=registry
        )
        self._listener_lost = Counter(
            name("listener_lost"), "LISTEN connections lost or refused", ["listener"], registry=registry
        )
        self._swept = Counter(name("swept_rows"), "Expired rows deleted by the sweeper", registry=registry)
        self._sweep_seconds = Histogram(
            name("sweep_seconds"),
            "Duration of sweep passes",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self._live = Gauge(
            name("live"), "Live sessions in the table (sampled)", multiprocess_mode="livemostrecent", registry=registry
        )
        self._cache_enabled = Gauge(
            name("cache_enabled"),
            "1 when the session cache serves reads",
            multiprocess_mode="liveall",
            registry=registry,
        )
        self._cache_entries = Gauge(
            name("cache_entries"), "Sessions in the session cache", multiprocess_mode="liveall", registry=registry
        )
        self._cache_bytes = Gauge(
            name("cache_bytes"), "Bytes the session cache accounts", multiprocess_mode="liveall", registry=registry
        )

    def event(self, event: SessionEvent) -> None:
        if event.name == "swept":
            return  # swept_rows counts them
        # A reason an app passed to end_*_sessions is its own text: one label for all of them,
        # so that the series stay few.
        reason = event.reason or ""
        self.events.labels(event.name, reason if reason in _REASONS else "other").inc()

    def load(self, outcome: str) -> None:
        self._loads[outcome].inc()

    def unavailable(self, cause: str) -> None:
        self._unavailable[cause].inc()

    def pool_wait(self, seconds: float) -> None:
        self._pool_waits.inc()
        self._pool_wait_seconds.inc(seconds)

    def listener_lost(self, listener: str) -> None:
        self._listener_lost.labels(listener).inc()

    def swept(self, rows: int, seconds: float) -> None:
        self._swept.inc(rows)
        self._sweep_seconds.observe(seconds)

    def sample(
        self, *, live_sessions: int | None, cache_enabled: bool | None, cache_entries: int, cache_bytes: int
    ) -> None:
        if live_sessions is not None:
            self._live.set(live_sessions)
        if cache_enabled is not None:
            self._cache_enabled.set(1 if cache_enabled else 0)
        self._cache_entries.set(cache_entries)
        self._cache_bytes.set(cache_bytes)

"""Settings: read from the environment once, at start, into one typed object.

Every setting the app reads is defined here, with its default and its rule.
`load_settings` raises `ConfigError` with one line saying what to set; nothing
else in the app reads `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp_session_postgres import DEFAULT_MAX_DATA_BYTES, ArgumentError, PostgresStorage

from .connections import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from .throttle import Limits

DEFAULT_EMBEDDED_DIR = Path(__file__).resolve().parent.parent / ".local"

# The cache's bound in bytes by default (the library's SessionCache default, 32 MiB), and the
# least SESSION_CACHE_MAX_BYTES may be: below a mebibyte the cache holds too little to be worth
# its listener's connection.
DEFAULT_CACHE_MAX_BYTES = 32 * 2**20
MIN_CACHE_MAX_BYTES = 2**20
# "Remember me" by default: a session of 14 days (Spring Security's remember-me and Devise's
# remember_for default to two weeks), ended after 7 days without a request (a week away is
# allowed, a fortnight is not). Never shorter than the ordinary absolute and idle timeouts.
DEFAULT_REMEMBER_TIMEOUT = 14 * 86400
DEFAULT_REMEMBER_IDLE_TIMEOUT = 7 * 86400
# The least SESSION_MAX_DATA_BYTES may be: the demo's own sessions must fit, and a login's holds
# at most about 350 bytes of JSON (a user id, a 64-character name of 4-byte characters, a notice).
MIN_MAX_DATA_BYTES = 1024
# METRICS_TOKEN: long enough that guessing is hopeless (as the authentication key), and only
# characters a bearer token may have (RFC 6750's b64token), so it fits an Authorization header.
MIN_METRICS_TOKEN_CHARS = 32
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
LOG_FORMATS = ("text", "json")
# Set by `serve` to the multiprocess directory it made for its gunicorn workers (workers.py).
METRICS_DIR_MARKER = "APP_METRICS_DIR_MADE_BY_SERVE"


class ConfigError(Exception):
    """A setting is missing or wrong. The message is one line that says what to set."""


@dataclass(frozen=True)
class Settings:
    # Where the data lives. None means "start an embedded PostgreSQL" (local only, never on Heroku).
    database_url: str | None
    # Connections per process. Budget: processes x dynos x this, plus one-off dynos, under the plan's limit.
    database_pool_max: int = 5
    # Upper bound, in seconds, on one database operation: waiting for a pool connection, connecting
    # and the statement itself. Past it the request answers 503 instead of hanging.
    database_timeout: float = 1.5
    # TCP keepalive on the pool's connections (and the cache's listener): an idle connection is
    # probed after this many seconds, then every database_keepalive_interval, and one a NAT or
    # load balancer dropped silently is closed by the kernel (then replaced) before a request
    # waits on it.
    database_keepalive_idle: int = 10
    database_keepalive_interval: int = 5
    # Seconds data sent to the database may stay unacknowledged (after its first retransmission)
    # before the kernel closes the connection (TCP_USER_TIMEOUT): a read on a connection that
    # died since its last probe is then run again on a new one, within database_timeout. None: a
    # third of database_timeout; 0: off.
    database_tcp_user_timeout: float | None = None
    # Signs the cookie (HMAC-SHA256). Several may be listed, newest first: the first signs, all verify.
    authentication_keys: tuple[bytes, ...] = field(default=(), repr=False)
    # Encrypts session data (AES-GCM). Same listing rule as the authentication keys.
    encryption_keys: tuple[bytes, ...] = field(default=(), repr=False)
    # A rotation's first step: keys that verify / decrypt and never sign / encrypt, deployed to
    # every process before any process puts them first (README, "Rotating keys").
    next_authentication_keys: tuple[bytes, ...] = field(default=(), repr=False)
    next_encryption_keys: tuple[bytes, ...] = field(default=(), repr=False)
    # Seconds without a request after which a session ends.
    idle_timeout: int = 1800
    # Seconds after login after which a session ends however active it is.
    absolute_timeout: int = 43200
    # A read-only request slides the idle deadline at most this often (seconds), so reads rarely write.
    touch_interval: int = 60
    # The cookie's name; "__Host-" is put in front of it whenever the cookie is Secure ("__Secure-"
    # when it has a Domain).
    cookie_name: str = "session"
    # The cookie's Domain (None: only this host, and the __Host- prefix) and SameSite.
    cookie_domain: str | None = None
    cookie_samesite: str = "Lax"
    # "Remember me" ticked at login: the session lives this long (seconds) and ends after
    # remember_idle_timeout without a request. Unticked: a browser-session cookie, and the
    # ordinary idle and absolute timeouts.
    remember_timeout: int = DEFAULT_REMEMBER_TIMEOUT
    remember_idle_timeout: int = DEFAULT_REMEMBER_IDLE_TIMEOUT
    # Seconds between sweeps of expired rows (each process jitters it), and rows deleted per batch.
    sweep_interval: int = 300
    sweep_batch_size: int = 1000
    # Believe X-Forwarded-For / -Proto (set by Heroku's router). On by default only on a dyno.
    trust_proxy: bool = False
    host: str = "0.0.0.0"  # noqa: S104 - a dyno must listen on all interfaces
    port: int = 8080
    # scrypt cost as log2(N). 15 is the production default; tests lower it.
    password_cost: int = 15
    # True on a Heroku dyno (DYNO is set there).
    on_heroku: bool = False
    log_level: str = "INFO"
    # "text": one line per record, `LEVEL logger: message request_id=...`; "json": one JSON object
    # per line, with the library's event fields (event, fp, user_id, reason...) as keys (logs.py).
    log_format: str = "text"
    # The bearer token that /metrics asks for (Prometheus' `authorization` credentials); None:
    # no /metrics at all (404).
    metrics_token: str | None = field(default=None, repr=False)
    # prometheus-client's multiprocess directory: set by `serve` itself (a fresh temporary
    # directory) before gunicorn's workers start, so that one scrape sees every worker.
    metrics_dir: Path | None = None
    # Whether `serve` made metrics_dir for this run (METRICS_DIR_MARKER names it): only
    # then does gunicorn's master empty and remove it (gunicorn_hooks.py). A directory the operator
    # gave is never deleted.
    metrics_dir_made_by_serve: bool = False
    # One line per request (aiohttp's access log). Off by default: Heroku's router already logs
    # every request (method, path, status, times, request ID), and the line cost a measured third
    # of the cached read path's throughput. On in embedded mode, where no router logs anything.
    access_log: bool = False
    # DATABASE_URL was unset: the app runs (and fills in database_url from) an embedded PostgreSQL.
    embedded: bool = False
    # In-process cache of validated sessions, kept coherent by LISTEN/NOTIFY (cache.py). With it,
    # a revocation made through another process takes effect when its notification arrives.
    cache: bool = True
    cache_size: int = 10_000
    # The cache's bound in bytes: each entry counts its data's length plus a measured overhead.
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    cache_max_age: int = 10
    # The most a session's data may be, in bytes of JSON (before encryption); a request whose
    # save would grow it past that answers 413 and changes nothing.
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES
    # Off: writes that end nothing (a fresh session, a data change, a touch) are answered before
    # PostgreSQL's WAL flush, and a database crash may lose the last moments of them; logouts,
    # revocations and logins that use up a session always wait (PostgresStorage durable_writes).
    durable_writes: bool = True
    # Behind PgBouncer in transaction pooling: no named prepared statements, no LISTEN.
    pgbouncer: bool = False
    # Worker processes on one port (Heroku's buildpack sets WEB_CONCURRENCY per dyno size). Above 1,
    # `serve` runs gunicorn with that many workers, each with its own pool (workers.py).
    web_concurrency: int = 1
    # Live sessions one user may hold; a login beyond it ends their least recently used one.
    max_sessions_per_user: int = 10
    # Seconds a client may take to send a request's line and headers (connections.py: aiohttp has
    # no such timeout); and open connections per process, past which the one waiting longest for
    # a request is closed. For a server with no router in front; Heroku's router reads requests itself.
    http_header_timeout: float = DEFAULT_HEADER_TIMEOUT
    http_max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Failed logins counted per window before 429 (see throttle.py for the four counts).
    login_limits: Limits = field(default_factory=Limits)
    # Embedded mode keeps its PostgreSQL data and generated keys here (git-ignored).
    embedded_dir: Path = DEFAULT_EMBEDDED_DIR
    # The user `python -m app user add-first` creates (the Deploy button's postdeploy script); the
    # password comes from app.json's generated FIRST_USER_PASSWORD. Read by that command only.
    first_user_name: str = "admin"
    first_user_password: str | None = field(default=None, repr=False)

    @property
    def tcp_user_timeout(self) -> float | None:
        """TCP_USER_TIMEOUT for the database's connections in seconds, or None for none."""
        if self.database_tcp_user_timeout is None:
            return self.database_timeout / 3
        return self.database_tcp_user_timeout or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default `os.environ`) or raise ConfigError.

    In embedded mode the keys may be missing: the embedded start-up supplies kept local ones.
    """
    env = os.environ if env is None else env
    on_heroku = bool(env.get("DYNO"))
    database_url = env.get("DATABASE_URL") or None
    if database_url is None and on_heroku:
        raise ConfigError("DATABASE_URL is not set: attach Heroku Postgres (heroku addons:create heroku-postgresql)")
    if database_url is not None:
        _check_database_url(database_url)
    embedded = database_url is None

    auth_raw = env.get("SESSION_AUTHENTICATION_KEY", "")
    enc_raw = env.get("SESSION_ENCRYPTION_KEY", "")
    if not embedded:
        if not auth_raw:
            raise ConfigError(
                "SESSION_AUTHENTICATION_KEY is not set: set it to a random string of at least 32 characters"
            )
        if not enc_raw:
            raise ConfigError(
                "SESSION_ENCRYPTION_KEY is not set: set it to a random string of 16, 24, or at least 32 bytes"
            )

    idle = _int(env, "SESSION_IDLE_TIMEOUT", 1800, minimum=1)
    absolute = _int(env, "SESSION_ABSOLUTE_TIMEOUT", 43200, minimum=1)
    touch = _int(env, "SESSION_TOUCH_INTERVAL", 60, minimum=0)

    cookie_name = env.get("SESSION_COOKIE_NAME", "session")
    if not cookie_name or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in cookie_name):
        raise ConfigError("SESSION_COOKIE_NAME must be non-empty and use only letters, digits, '-', '_' or '.'")
    if cookie_name.lower().startswith(("__host-", "__secure-")):
        raise ConfigError(
            "SESSION_COOKIE_NAME must not carry a prefix: '__Host-' (or '__Secure-') is added when the cookie is Secure"
        )
    cookie_domain = env.get("SESSION_COOKIE_DOMAIN") or None
    cookie_samesite = env.get("SESSION_COOKIE_SAMESITE") or "Lax"
    if cookie_samesite.capitalize() in ("Lax", "Strict", "None"):
        cookie_samesite = cookie_samesite.capitalize()
    remember = _int(env, "SESSION_REMEMBER_TIMEOUT", max(DEFAULT_REMEMBER_TIMEOUT, absolute), minimum=1)
    remember_idle = _int(
        env, "SESSION_REMEMBER_IDLE_TIMEOUT", min(max(DEFAULT_REMEMBER_IDLE_TIMEOUT, idle), remember), minimum=1
    )

    pgbouncer = _bool(env, "DATABASE_PGBOUNCER", default=False)
    # On by default, except behind PgBouncer's transaction pooling, which cannot carry LISTEN.
    cache = _bool(env, "SESSION_CACHE", default=not pgbouncer)
    if cache and pgbouncer:
        raise ConfigError(
            "SESSION_CACHE=on needs LISTEN/NOTIFY, which PgBouncer's transaction pooling cannot carry: "
            "turn one of SESSION_CACHE and DATABASE_PGBOUNCER off"
        )

    log_level = env.get("LOG_LEVEL", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR")
    log_format = (env.get("LOG_FORMAT") or "text").strip().lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError("LOG_FORMAT must be text or json")
    metrics_token = _metrics_token(env.get("METRICS_TOKEN") or None)
    metrics_dir = env.get("PROMETHEUS_MULTIPROC_DIR") or None
    if metrics_dir is not None and not Path(metrics_dir).is_dir():
        raise ConfigError("PROMETHEUS_MULTIPROC_DIR must be an existing directory (or unset: serve makes one)")
    metrics_dir_made_by_serve = metrics_dir is not None and env.get(METRICS_DIR_MARKER) == metrics_dir

    authentication_keys = _split_keys(auth_raw, "SESSION_AUTHENTICATION_KEY") if auth_raw else ()
    # The Go sample's determineEncryptionKey: 16, 24 or 32 bytes as they are; longer is cut to 32.
    encryption_keys = tuple(key[:32] for key in _split_keys(enc_raw, "SESSION_ENCRYPTION_KEY")) if enc_raw else ()
    next_auth_raw = env.get("SESSION_NEXT_AUTHENTICATION_KEY", "")
    next_enc_raw = env.get("SESSION_NEXT_ENCRYPTION_KEY", "")
    next_authentication_keys = (
        _split_keys(next_auth_raw, "SESSION_NEXT_AUTHENTICATION_KEY") if next_auth_raw.strip() else ()
    )
    next_encryption_keys = (
        tuple(key[:32] for key in _split_keys(next_enc_raw, "SESSION_NEXT_ENCRYPTION_KEY"))
        if next_enc_raw.strip()
        else ()
    )
    database_timeout = _float(env, "DATABASE_TIMEOUT", 1.5, minimum=0.1, maximum=30.0)
    max_per_user = _int(env, "SESSION_MAX_PER_USER", 10, minimum=1, maximum=10_000)
    max_data_bytes = _int(env, "SESSION_MAX_DATA_BYTES", DEFAULT_MAX_DATA_BYTES, minimum=MIN_MAX_DATA_BYTES)
    tcp_user_timeout = _float(env, "DATABASE_TCP_USER_TIMEOUT", database_timeout / 3, minimum=0.0, maximum=30.0)
    if tcp_user_timeout >= database_timeout:
        raise ConfigError(
            f"DATABASE_TCP_USER_TIMEOUT must be less than DATABASE_TIMEOUT ({database_timeout}), so that a read"
            f" on a dead connection can be tried again in time; got {tcp_user_timeout} (0 turns it off)"
        )
    try:  # the library's rules, for what it takes; our own message
        PostgresStorage.check_arguments(
            # Embedded mode supplies its own keys later: the timeouts are checked all the same.
            authentication_keys=authentication_keys or (b"\0" * 32,),
            encryption_keys=encryption_keys or (b"\0" * 32,),
            next_authentication_keys=next_authentication_keys,
            next_encryption_keys=next_encryption_keys,
            idle_timeout=idle,
            absolute_timeout=absolute,
            touch_interval=touch,
            database_timeout=database_timeout,
            max_sessions_per_user=max_per_user,
            max_data_bytes=max_data_bytes,
            max_remember_timeout=remember,
            remember_idle_timeout=remember_idle,
            cookie_name=cookie_name,
            domain=cookie_domain,
            samesite=cookie_samesite,
        )
    except ArgumentError as exc:
        keys = {
            "authentication_keys": authentication_keys,
            "encryption_keys": encryption_keys,
            "next_authentication_keys": next_authentication_keys,
            "next_encryption_keys": next_encryption_keys,
        }
        raise ConfigError(_setting_error(exc, keys)) from None

    return Settings(
        database_url=database_url,
        database_pool_max=_int(env, "DATABASE_POOL_MAX", 5, minimum=1, maximum=100),
        database_timeout=database_timeout,
        database_keepalive_idle=_int(env, "DATABASE_KEEPALIVE_IDLE", 10, minimum=1, maximum=7200),
        database_keepalive_interval=_int(env, "DATABASE_KEEPALIVE_INTERVAL", 5, minimum=1, maximum=600),
        database_tcp_user_timeout=tcp_user_timeout,
        authentication_keys=authentication_keys,
        encryption_keys=encryption_keys,
        next_authentication_keys=next_authentication_keys,
        next_encryption_keys=next_encryption_keys,
        idle_timeout=idle,
        absolute_timeout=absolute,
        touch_interval=touch,
        cookie_name=cookie_name,
        cookie_domain=cookie_domain,
        cookie_samesite=cookie_samesite,
        remember_timeout=remember,
        remember_idle_timeout=remember_idle,
        sweep_interval=_int(env, "SWEEP_INTERVAL", 300, minimum=1),
        sweep_batch_size=_int(env, "SWEEP_BATCH_SIZE", 1000, minimum=1, maximum=100_000),
        trust_proxy=_bool(env, "TRUST_PROXY", default=on_heroku),
        # Embedded mode is a laptop database with demo credentials: never listen beyond loopback.
        host="127.0.0.1" if embedded else env.get("HOST", "0.0.0.0"),  # noqa: S104
        port=_int(env, "PORT", 8080, minimum=1, maximum=65535),
        password_cost=_int(env, "PASSWORD_HASH_COST", 15, minimum=1, maximum=20),
        on_heroku=on_heroku,
        log_level=log_level,
        log_format=log_format,
        metrics_token=metrics_token,
        metrics_dir=Path(metrics_dir) if metrics_dir is not None else None,
        metrics_dir_made_by_serve=metrics_dir_made_by_serve,
        access_log=_bool(env, "ACCESS_LOG", default=embedded),
        embedded=embedded,
        cache=cache,
        cache_size=_int(env, "SESSION_CACHE_SIZE", 10_000, minimum=1),
        cache_max_bytes=_int(env, "SESSION_CACHE_MAX_BYTES", DEFAULT_CACHE_MAX_BYTES, minimum=MIN_CACHE_MAX_BYTES),
        cache_max_age=_int(env, "SESSION_CACHE_MAX_AGE", 10, minimum=1),
        durable_writes=_bool(env, "SESSION_DURABLE_WRITES", default=True),
        pgbouncer=pgbouncer,
        web_concurrency=_int(env, "WEB_CONCURRENCY", 1, minimum=1, maximum=100),
        http_header_timeout=_float(env, "HTTP_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT, minimum=0.1, maximum=300.0),
        http_max_connections=_int(env, "HTTP_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, minimum=1, maximum=1_000_000),
        login_limits=Limits(
            window=_int(env, "LOGIN_THROTTLE_WINDOW", 900, minimum=1),
            per_username_ip=_int(env, "LOGIN_MAX_FAILURES_PER_USERNAME_IP", 5, minimum=1),
            per_ip=_int(env, "LOGIN_MAX_FAILURES_PER_IP", 20, minimum=1),
            per_username=_int(env, "LOGIN_MAX_FAILURES_PER_USERNAME", 100, minimum=1),
            per_device=_int(env, "LOGIN_MAX_FAILURES_PER_DEVICE", 5, minimum=1),
        ),
        max_sessions_per_user=max_per_user,
        max_data_bytes=max_data_bytes,
        embedded_dir=Path(env.get("EMBEDDED_DATA_DIR") or DEFAULT_EMBEDDED_DIR).resolve(),
        first_user_name=env.get("FIRST_USER_NAME") or "admin",
        first_user_password=env.get("FIRST_USER_PASSWORD") or None,
    )


# The library's arguments, as the settings that give them.
_SETTING_OF = {
    "idle_timeout": "SESSION_IDLE_TIMEOUT",
    "absolute_timeout": "SESSION_ABSOLUTE_TIMEOUT",
    "touch_interval": "SESSION_TOUCH_INTERVAL",
    "database_timeout": "DATABASE_TIMEOUT",
    "max_sessions_per_user": "SESSION_MAX_PER_USER",
    "max_data_bytes": "SESSION_MAX_DATA_BYTES",
    "authentication_keys": "SESSION_AUTHENTICATION_KEY",
    "encryption_keys": "SESSION_ENCRYPTION_KEY",
    "next_authentication_keys": "SESSION_NEXT_AUTHENTICATION_KEY",
    "next_encryption_keys": "SESSION_NEXT_ENCRYPTION_KEY",
    "max_remember_timeout": "SESSION_REMEMBER_TIMEOUT",
    "remember_idle_timeout": "SESSION_REMEMBER_IDLE_TIMEOUT",
    "cookie_name": "SESSION_COOKIE_NAME",
    "domain": "SESSION_COOKIE_DOMAIN",
    "samesite": "SESSION_COOKIE_SAMESITE",
}


def _setting_error(exc: ArgumentError, keys: Mapping[str, tuple[bytes, ...]]) -> str:
    """The library's ArgumentError, said in terms of the settings."""
    if exc.argument in ("touch_interval", "idle_timeout"):
        return (
            "SESSION_TOUCH_INTERVAL must be less than SESSION_IDLE_TIMEOUT, which must not exceed"
            f" SESSION_ABSOLUTE_TIMEOUT ({exc})"
        )
    if exc.argument in ("max_remember_timeout", "remember_idle_timeout"):
        return (
            "need SESSION_ABSOLUTE_TIMEOUT <= SESSION_REMEMBER_TIMEOUT and SESSION_IDLE_TIMEOUT <="
            f" SESSION_REMEMBER_IDLE_TIMEOUT <= SESSION_REMEMBER_TIMEOUT ({exc})"
        )
    setting = _SETTING_OF[exc.argument]
    if exc.index is not None:
        key = keys[exc.argument][exc.index - 1]
        longer = "; a longer one is cut to 32" if exc.argument.endswith("encryption_keys") else ""
        return f"{setting} key {exc.index} is {len(key)} bytes: {exc}{longer}"
    return f"{setting}: {exc}"


def _metrics_token(raw: str | None) -> str | None:
    """METRICS_TOKEN, checked (its value is never quoted in the message)."""
    if raw is None:
        return None
    token = raw.strip()
    if len(token) < MIN_METRICS_TOKEN_CHARS or not set(token) <= _TOKEN_CHARS:
        raise ConfigError(
            f"METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_CHARS} characters of letters, digits and"
            " -._~+/= (a random string: openssl rand -hex 32), or unset for no /metrics"
        )
    return token


def _split_keys(raw: str, name: str) -> tuple[bytes, ...]:
    """Comma-separated, newest first; each the UTF-8 bytes of the value, as the Go sample takes them."""
    keys = [k.strip() for k in raw.split(",")]
    if any(not k for k in keys):
        raise ConfigError(f"{name} has an empty entry: list keys comma-separated, newest first")
    return tuple(k.encode() for k in keys)


def _check_database_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0-65535
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL is not a valid URL ({exc})") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError("DATABASE_URL must start with postgres:// or postgresql://")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum} seconds, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")

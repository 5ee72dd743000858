"""Settings from the environment: defaults, the rules of each variable, and one clear error each."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import DEFAULT_EMBEDDED_DIR, ConfigError, load_settings

URL = "postgresql://app:secret@db.example.com:5432/app"
AUTH = "a" * 32
ENC = "e" * 32
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what the settings say, not a bind


def env(**values: str) -> dict[str, str]:
    """A complete non-embedded environment, with `values` on top ('' is the same as unset)."""
    base = {"DATABASE_URL": URL, "SESSION_AUTHENTICATION_KEY": AUTH, "SESSION_ENCRYPTION_KEY": ENC}
    base.update(values)
    return base


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- defaults --------------------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings(env())
    assert s.database_url == URL
    assert s.embedded is False
    assert s.authentication_keys == (AUTH.encode(),)
    assert s.encryption_keys == (ENC.encode(),)
    assert s.database_pool_max == 5
    assert s.database_timeout == 1.5
    assert s.idle_timeout == 1800
    assert s.absolute_timeout == 43200
    assert s.touch_interval == 60
    assert s.cookie_name == "session"
    assert s.sweep_interval == 300
    assert s.sweep_batch_size == 1000
    assert s.trust_proxy is False
    assert s.host == ALL_INTERFACES
    assert s.port == 8080
    assert s.password_cost == 15
    assert s.on_heroku is False
    assert s.log_level == "INFO"
    assert s.embedded_dir == DEFAULT_EMBEDDED_DIR
    assert Path(__file__).resolve().parents[2] / ".local" == DEFAULT_EMBEDDED_DIR
    # The production defaults of issue 11: cache on, no access log, durable writes.
    assert (s.cache, s.cache_size, s.cache_max_age) == (True, 10_000, 10)
    assert s.access_log is False
    assert s.durable_writes is True
    assert s.max_sessions_per_user == 10
    # Memory bounded by bytes (issue 20): 32 MiB of cache, 64 KiB of data per session.
    assert (s.cache_max_bytes, s.max_data_bytes) == (32 * 2**20, 65_536)


def test_the_byte_bounds_are_read_and_checked() -> None:
    s = load_settings(env(SESSION_CACHE_MAX_BYTES="1048576", SESSION_MAX_DATA_BYTES="1024"))
    assert (s.cache_max_bytes, s.max_data_bytes) == (2**20, 1024)
    assert config_error(env(SESSION_CACHE_MAX_BYTES="1048575")) == (
        "SESSION_CACHE_MAX_BYTES must be at least 1048576, got 1048575"
    )
    assert config_error(env(SESSION_MAX_DATA_BYTES="1023")) == "SESSION_MAX_DATA_BYTES must be at least 1024, got 1023"
    assert config_error(env(SESSION_MAX_DATA_BYTES="64k")) == "SESSION_MAX_DATA_BYTES must be a whole number, got '64k'"


def test_the_cache_is_off_by_default_behind_pgbouncer_and_refused_with_it() -> None:
    assert load_settings(env(DATABASE_PGBOUNCER="on")).cache is False
    with pytest.raises(ConfigError, match="SESSION_CACHE=on needs LISTEN/NOTIFY"):
        load_settings(env(DATABASE_PGBOUNCER="on", SESSION_CACHE="on"))


def test_the_access_log_is_on_by_default_only_in_embedded_mode() -> None:
    assert load_settings({}).access_log is True
    assert load_settings(env(ACCESS_LOG="on")).access_log is True
    assert load_settings({"ACCESS_LOG": "off"}).access_log is False


def test_durable_writes_can_be_turned_off() -> None:
    assert load_settings(env(SESSION_DURABLE_WRITES="off")).durable_writes is False
    with pytest.raises(ConfigError, match="SESSION_DURABLE_WRITES"):
        load_settings(env(SESSION_DURABLE_WRITES="sometimes"))


def test_empty_values_mean_default() -> None:
    s = load_settings(env(SESSION_IDLE_TIMEOUT="", PORT="", DATABASE_TIMEOUT="", TRUST_PROXY=""))
    assert (s.idle_timeout, s.port, s.database_timeout, s.trust_proxy) == (1800, 8080, 1.5, False)


def test_explicit_values_are_read() -> None:
    s = load_settings(
        env(
            DATABASE_POOL_MAX="3",
            DATABASE_TIMEOUT="2.5",
            SESSION_IDLE_TIMEOUT="600",
            SESSION_ABSOLUTE_TIMEOUT="3600",
            SESSION_TOUCH_INTERVAL="30",
            SESSION_COOKIE_NAME="sid",
            SWEEP_INTERVAL="60",
            SWEEP_BATCH_SIZE="50",
            HOST="127.0.0.2",
            PORT=" 5000 ",
            PASSWORD_HASH_COST="4",
            LOG_LEVEL="debug",
        )
    )
    assert s.database_pool_max == 3
    assert s.database_timeout == 2.5
    assert (s.idle_timeout, s.absolute_timeout, s.touch_interval) == (600, 3600, 30)
    assert s.cookie_name == "sid"
    assert (s.sweep_interval, s.sweep_batch_size) == (60, 50)
    assert (s.host, s.port) == ("127.0.0.2", 5000)
    assert s.password_cost == 4
    assert s.log_level == "DEBUG"


def test_keys_are_not_in_repr() -> None:
    text = repr(load_settings(env()))
    assert AUTH not in text
    assert ENC not in text


# -- required keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SESSION_AUTHENTICATION_KEY", "SESSION_ENCRYPTION_KEY"])
def test_missing_key_outside_embedded_mode_names_it(name: str) -> None:
    without = env()
    del without[name]
    assert name in config_error(without)
    assert name in config_error(env(**{name: ""}))


# -- encryption key --------------------------------------------------------------------------


@pytest.mark.parametrize("length", [16, 24, 32])
def test_encryption_key_of_aes_length_is_used_as_is(length: int) -> None:
    key = "k0123456789abcdefghijklmnopqrstuvwxyz"[:length]
    assert load_settings(env(SESSION_ENCRYPTION_KEY=key)).encryption_keys == (key.encode(),)


def test_longer_encryption_key_is_cut_to_32_bytes() -> None:
    key = "0123456789abcdef0123456789abcdefGHIJKLMN"  # 40 characters, like a generated secret
    assert load_settings(env(SESSION_ENCRYPTION_KEY=key)).encryption_keys == (key[:32].encode(),)
    long_hex = "f" * 64
    assert load_settings(env(SESSION_ENCRYPTION_KEY=long_hex)).encryption_keys == (b"f" * 32,)


@pytest.mark.parametrize("length", [1, 15, 17, 23, 25, 31])
def test_encryption_key_of_other_length_is_rejected(length: int) -> None:
    message = config_error(env(SESSION_ENCRYPTION_KEY="x" * length))
    assert "SESSION_ENCRYPTION_KEY" in message
    assert str(length) in message


def test_encryption_key_is_counted_in_utf8_bytes() -> None:
    # 8 characters, 16 bytes: AES-128 with exactly those bytes.
    assert load_settings(env(SESSION_ENCRYPTION_KEY="é" * 8)).encryption_keys == (("é" * 8).encode(),)
    assert load_settings(env(SESSION_ENCRYPTION_KEY="é" * 12)).encryption_keys == (("é" * 12).encode(),)
    # 16 characters but 32 bytes: accepted as AES-256, not as AES-128.
    assert load_settings(env(SESSION_ENCRYPTION_KEY="é" * 16)).encryption_keys == (("é" * 16).encode(),)
    # 10 characters, 20 bytes: no AES size.
    assert "20 bytes" in config_error(env(SESSION_ENCRYPTION_KEY="é" * 10))
    # 40 bytes: cut to the first 32.
    assert load_settings(env(SESSION_ENCRYPTION_KEY="é" * 20)).encryption_keys == (("é" * 20).encode()[:32],)


# -- authentication key ----------------------------------------------------------------------


def test_authentication_key_needs_32_characters() -> None:
    message = config_error(env(SESSION_AUTHENTICATION_KEY="a" * 31))
    assert "SESSION_AUTHENTICATION_KEY" in message
    assert "31" in message
    assert load_settings(env(SESSION_AUTHENTICATION_KEY="b" * 32)).authentication_keys == (b"b" * 32,)
    assert load_settings(env(SESSION_AUTHENTICATION_KEY="c" * 100)).authentication_keys == (b"c" * 100,)


# -- key lists -------------------------------------------------------------------------------


def test_key_lists_keep_newest_first() -> None:
    auth_new, auth_old = "n" * 32, "o" * 40
    enc_new, enc_old, enc_older = "N" * 16, "O" * 24, "P" * 40
    s = load_settings(
        env(
            SESSION_AUTHENTICATION_KEY=f"{auth_new}, {auth_old}",
            SESSION_ENCRYPTION_KEY=f" {enc_new},{enc_old} ,{enc_older}",
        )
    )
    assert s.authentication_keys == (auth_new.encode(), auth_old.encode())
    assert s.encryption_keys == (enc_new.encode(), enc_old.encode(), enc_older[:32].encode())


@pytest.mark.parametrize("name", ["SESSION_AUTHENTICATION_KEY", "SESSION_ENCRYPTION_KEY"])
@pytest.mark.parametrize("template", ["{k},,{k}", "{k},", ",{k}", "{k}, "])
def test_key_list_with_empty_entry_is_rejected(name: str, template: str) -> None:
    assert name in config_error(env(**{name: template.format(k="z" * 32)}))


def test_every_key_in_a_list_is_checked() -> None:
    message = config_error(env(SESSION_AUTHENTICATION_KEY=f"{'a' * 32},{'b' * 10}"))
    assert "SESSION_AUTHENTICATION_KEY key 2" in message
    message = config_error(env(SESSION_ENCRYPTION_KEY=f"{'a' * 32},{'b' * 20}"))
    assert "SESSION_ENCRYPTION_KEY key 2" in message


def test_next_keys_are_lists_under_the_same_rules_and_unset_by_default() -> None:
    assert load_settings(env()).next_authentication_keys == ()
    assert load_settings(env()).next_encryption_keys == ()
    blank = load_settings(env(SESSION_NEXT_AUTHENTICATION_KEY=" ", SESSION_NEXT_ENCRYPTION_KEY=""))
    assert (blank.next_authentication_keys, blank.next_encryption_keys) == ((), ())
    s = load_settings(
        env(SESSION_NEXT_AUTHENTICATION_KEY=f"{'n' * 32}, {'m' * 40}", SESSION_NEXT_ENCRYPTION_KEY="N" * 40)
    )
    assert s.next_authentication_keys == (b"n" * 32, b"m" * 40)
    assert s.next_encryption_keys == (b"N" * 32,)  # cut to 32, as the encryption keys are
    assert "n" * 32 not in repr(s)
    message = config_error(env(SESSION_NEXT_AUTHENTICATION_KEY=f"{'a' * 32},{'b' * 10}"))
    assert message.startswith("SESSION_NEXT_AUTHENTICATION_KEY key 2 is 10 bytes"), message
    message = config_error(env(SESSION_NEXT_ENCRYPTION_KEY="b" * 20))
    assert message.startswith("SESSION_NEXT_ENCRYPTION_KEY key 1 is 20 bytes"), message
    assert "SESSION_NEXT_ENCRYPTION_KEY" in config_error(env(SESSION_NEXT_ENCRYPTION_KEY=f"{'e' * 32},"))


# -- timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize(("touch", "idle"), [("1800", "1800"), ("1801", "1800"), ("5", "5"), ("1", "1")])
def test_touch_interval_must_be_below_idle_timeout(touch: str, idle: str) -> None:
    message = config_error(env(SESSION_TOUCH_INTERVAL=touch, SESSION_IDLE_TIMEOUT=idle))
    assert "SESSION_TOUCH_INTERVAL" in message
    assert "SESSION_IDLE_TIMEOUT" in message


def test_touch_interval_default_is_checked_against_idle_timeout() -> None:
    # Only the idle timeout is set, below the 60 s default touch interval.
    assert "SESSION_TOUCH_INTERVAL" in config_error(env(SESSION_IDLE_TIMEOUT="60"))


def test_idle_timeout_must_not_exceed_absolute_timeout() -> None:
    message = config_error(env(SESSION_IDLE_TIMEOUT="3601", SESSION_ABSOLUTE_TIMEOUT="3600"))
    assert "SESSION_IDLE_TIMEOUT" in message
    assert "SESSION_ABSOLUTE_TIMEOUT" in message
    # Against the default absolute timeout too.
    assert "SESSION_ABSOLUTE_TIMEOUT" in config_error(env(SESSION_IDLE_TIMEOUT="43201"))
    s = load_settings(env(SESSION_IDLE_TIMEOUT="3600", SESSION_ABSOLUTE_TIMEOUT="3600"))
    assert s.idle_timeout == s.absolute_timeout == 3600


def test_one_second_timeouts_are_accepted() -> None:
    s = load_settings(env(SESSION_TOUCH_INTERVAL="0", SESSION_IDLE_TIMEOUT="1", SESSION_ABSOLUTE_TIMEOUT="1"))
    assert (s.touch_interval, s.idle_timeout, s.absolute_timeout) == (0, 1, 1)


# -- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSION_IDLE_TIMEOUT", "abc"),
        ("SESSION_IDLE_TIMEOUT", "1.5"),
        ("SESSION_ABSOLUTE_TIMEOUT", "1h"),
        ("SESSION_TOUCH_INTERVAL", "ten"),
        ("PORT", "http"),
        ("DATABASE_POOL_MAX", "5 connections"),
        ("SWEEP_INTERVAL", "0x10"),
        ("SWEEP_BATCH_SIZE", "1e3"),
        ("PASSWORD_HASH_COST", "high"),
        ("DATABASE_TIMEOUT", "fast"),
        ("DATABASE_TIMEOUT", "1.5s"),
    ],
)
def test_non_numeric_values_are_rejected_with_their_name(name: str, value: str) -> None:
    message = config_error(env(**{name: value}))
    assert message.startswith(name)
    assert repr(value) in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSION_IDLE_TIMEOUT", "0"),
        ("SESSION_ABSOLUTE_TIMEOUT", "0"),
        ("SESSION_TOUCH_INTERVAL", "-1"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("DATABASE_POOL_MAX", "0"),
        ("DATABASE_POOL_MAX", "101"),
        ("SWEEP_INTERVAL", "0"),
        ("SWEEP_BATCH_SIZE", "0"),
        ("SWEEP_BATCH_SIZE", "100001"),
        ("PASSWORD_HASH_COST", "0"),
        ("PASSWORD_HASH_COST", "21"),
        ("DATABASE_TIMEOUT", "0.05"),
        ("DATABASE_TIMEOUT", "31"),
        ("DATABASE_TIMEOUT", "nan"),
        ("DATABASE_TIMEOUT", "inf"),
    ],
)
def test_out_of_range_values_are_rejected_with_their_name(name: str, value: str) -> None:
    assert config_error(env(**{name: value})).startswith(name)


def test_keepalive_and_tcp_user_timeout() -> None:
    s = load_settings(env())
    assert (s.database_keepalive_idle, s.database_keepalive_interval) == (10, 5)
    assert s.tcp_user_timeout == 0.5  # a third of DATABASE_TIMEOUT
    assert load_settings(env(DATABASE_TIMEOUT="3")).tcp_user_timeout == 1.0
    s = load_settings(
        env(DATABASE_KEEPALIVE_IDLE="30", DATABASE_KEEPALIVE_INTERVAL="2", DATABASE_TCP_USER_TIMEOUT="0.8")
    )
    assert (s.database_keepalive_idle, s.database_keepalive_interval, s.tcp_user_timeout) == (30, 2, 0.8)
    assert load_settings(env(DATABASE_TCP_USER_TIMEOUT="0")).tcp_user_timeout is None  # off
    # At or past the deadline, a read on a dead connection could never be run again in time.
    message = config_error(env(DATABASE_TCP_USER_TIMEOUT="1.5"))
    assert message.startswith("DATABASE_TCP_USER_TIMEOUT must be less than DATABASE_TIMEOUT (1.5)")
    for name, value in (
        ("DATABASE_KEEPALIVE_IDLE", "0"),
        ("DATABASE_KEEPALIVE_IDLE", "7201"),
        ("DATABASE_KEEPALIVE_INTERVAL", "0"),
        ("DATABASE_KEEPALIVE_INTERVAL", "1.5"),
        ("DATABASE_TCP_USER_TIMEOUT", "-1"),
        ("DATABASE_TCP_USER_TIMEOUT", "soon"),
    ):
        assert config_error(env(**{name: value})).startswith(name)


def test_range_boundaries_are_accepted() -> None:
    s = load_settings(
        env(PORT="65535", DATABASE_POOL_MAX="100", DATABASE_TIMEOUT="0.1", PASSWORD_HASH_COST="20", SWEEP_INTERVAL="1")
    )
    assert (s.port, s.database_pool_max, s.database_timeout, s.password_cost, s.sweep_interval) == (
        65535,
        100,
        0.1,
        20,
        1,
    )
    assert load_settings(env(PORT="1", DATABASE_POOL_MAX="1", DATABASE_TIMEOUT="30")).port == 1


# -- Heroku and the proxy --------------------------------------------------------------------


def test_dyno_without_database_url_is_an_error() -> None:
    no_url = env(DYNO="web.1")
    del no_url["DATABASE_URL"]
    assert "DATABASE_URL" in config_error(no_url)
    assert "DATABASE_URL" in config_error(env(DYNO="web.1", DATABASE_URL=""))


def test_on_heroku_follows_dyno() -> None:
    assert load_settings(env(DYNO="web.1")).on_heroku is True
    assert load_settings(env()).on_heroku is False


def test_trust_proxy_defaults_on_with_dyno_off_without() -> None:
    assert load_settings(env(DYNO="web.1")).trust_proxy is True
    assert load_settings(env()).trust_proxy is False


@pytest.mark.parametrize("value", ["1", "true", "on", "yes", "TRUE", " On "])
def test_trust_proxy_explicit_on(value: str) -> None:
    assert load_settings(env(TRUST_PROXY=value)).trust_proxy is True


@pytest.mark.parametrize("value", ["0", "false", "off", "no", "NO"])
def test_trust_proxy_explicit_off_wins_over_dyno(value: str) -> None:
    assert load_settings(env(TRUST_PROXY=value, DYNO="web.1")).trust_proxy is False


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "y"])
def test_trust_proxy_junk_is_rejected(value: str) -> None:
    assert config_error(env(TRUST_PROXY=value)).startswith("TRUST_PROXY")


# -- embedded mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("unset", [{}, {"DATABASE_URL": ""}])
def test_embedded_mode_listens_on_loopback_and_keys_are_optional(unset: dict[str, str]) -> None:
    s = load_settings({"HOST": ALL_INTERFACES, **unset})
    assert s.embedded is True
    assert s.database_url is None
    assert s.host == "127.0.0.1"
    assert s.authentication_keys == ()
    assert s.encryption_keys == ()
    assert s.on_heroku is False
    assert s.trust_proxy is False


def test_embedded_mode_uses_given_keys_and_still_checks_them() -> None:
    s = load_settings({"SESSION_AUTHENTICATION_KEY": AUTH, "SESSION_ENCRYPTION_KEY": ENC})
    assert s.embedded is True
    assert s.authentication_keys == (AUTH.encode(),)
    assert s.encryption_keys == (ENC.encode(),)
    assert "SESSION_ENCRYPTION_KEY" in config_error({"SESSION_ENCRYPTION_KEY": "short"})
    assert "SESSION_AUTHENTICATION_KEY" in config_error({"SESSION_AUTHENTICATION_KEY": "short"})


def test_embedded_data_dir_is_read_and_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings({"EMBEDDED_DATA_DIR": str(tmp_path / "x")}).embedded_dir == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    assert load_settings({"EMBEDDED_DATA_DIR": "rel"}).embedded_dir == tmp_path / "rel"
    assert load_settings({}).embedded_dir == DEFAULT_EMBEDDED_DIR


def test_outside_embedded_mode_host_is_honoured() -> None:
    assert load_settings(env(HOST="127.0.0.1")).host == "127.0.0.1"


# -- DATABASE_URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@host:5432/db",
        "postgresql://u:p@host/db?sslmode=require",
        "postgresql://postgres:@/postgres?host=/tmp/pg",
    ],
)
def test_postgres_urls_are_accepted(url: str) -> None:
    assert load_settings(env(DATABASE_URL=url)).database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:p@host/db",
        "http://host/db",
        "postgresql+asyncpg://u:p@host/db",
        "host:5432/db",
        "db.example.com",
        "postgresql://u:p@host:99999/db",
        "postgresql://u:p@host:port/db",
        "postgresql://u:p@[::1/db",
    ],
)
def test_bad_database_url_is_rejected(url: str) -> None:
    message = config_error(env(DATABASE_URL=url))
    assert message.startswith("DATABASE_URL")
    assert ":p@" not in message  # never the password


# -- cookie name and log level ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["sid", "my_app.session-1", "S"])
def test_cookie_name_accepted(name: str) -> None:
    assert load_settings(env(SESSION_COOKIE_NAME=name)).cookie_name == name


@pytest.mark.parametrize(
    "name", ["a b", "a;b", "a=b", "sé", "a,b", 'a"b', "__Host-session", "__host-session", "__Secure-x", "__SECURE-x"]
)
def test_cookie_name_rejected(name: str) -> None:
    assert config_error(env(SESSION_COOKIE_NAME=name)).startswith("SESSION_COOKIE_NAME")


def test_log_level() -> None:
    assert load_settings(env(LOG_LEVEL="warning")).log_level == "WARNING"
    assert config_error(env(LOG_LEVEL="verbose")).startswith("LOG_LEVEL")

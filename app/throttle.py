"""Login throttling, kept in PostgreSQL so it holds across processes and dynos.

An attempt is counted before its password is checked: `begin` records it as a failure, in one
transaction that first takes an advisory lock on each count it belongs to, so of any number of
concurrent attempts at most the limit are let through to the password check, whatever their
timing and whichever process they reach. A success then deletes its record (`succeeded`).

Within a sliding window (15 minutes by default), failures are counted several ways, and an
attempt is refused (HTTP 429) once a count it belongs to has reached its limit:
- one username from one address (5): guessing one account from one place;
- one address, any usernames (20): spraying many accounts from one place;
- one username, any addresses (100): a distributed attack on one account;
- one device (5): a browser that holds a device cookie for the username (devices.py). Such a
  browser has signed in as that user before (with the current password), and this is its only
  count: an attacker cannot lock the owner out of their own devices, neither through the
  username nor through an address they share (OWASP, "Slow Down Online Guessing Attacks with
  Device Cookies"). Its failures still count for the others.
A username that belongs to a user is counted as that user (`user:<id>`): every spelling of its
key (`ALICE`, `alice` in full-width letters) is one count. Any other username is counted as its key
(usernames.throttle_key: RFC 8265, computed in Python, as the users table's), so a look-alike
(`alİce`, `alice` with a Cyrillic a) counts the same whether or not `alice` exists.
Addresses are normalised first: IPv4-mapped IPv6 is IPv4, IPv6 is counted per /64 (what one
customer of a provider gets), so the spellings of one address are one count.
Refused attempts are not recorded, so waiting out the window always works. A success clears
the failures of its own username and address, or of its own device.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

import asyncpg

from . import usernames

_MAX_KEY_CHARS = 256

# Advisory lock classes (the first argument of pg_advisory_xact_lock(int, int)), taken in this
# order only, so two attempts never wait for each other in a cycle.
_LOCK_USERNAME, _LOCK_ADDRESS, _LOCK_DEVICE = 0x7470_0001, 0x7470_0002, 0x7470_0003

# $1 username, $2 address, $3 device (NULL when the browser has none for this username),
# $4 window, $5-$8 the limits: username+address, address, username, device.
# The username counts are skipped for a device; a failure record without a device has device NULL.
BEGIN_SQL = """
WITH counted AS (
    SELECT
        count(*) FILTER (WHERE username_key = $1 AND client_ip = $2) AS username_ip,
        min(failed_at) FILTER (WHERE username_key = $1 AND client_ip = $2) AS username_ip_oldest,
        count(*) FILTER (WHERE client_ip = $2) AS ip,
        min(failed_at) FILTER (WHERE client_ip = $2) AS ip_oldest,
        count(*) FILTER (WHERE username_key = $1) AS username,
        min(failed_at) FILTER (WHERE username_key = $1) AS username_oldest,
        count(*) FILTER (WHERE device = $3) AS device,
        min(failed_at) FILTER (WHERE device = $3) AS device_oldest
    FROM login_failures
    WHERE failed_at > now() - make_interval(secs => $4)
        AND (username_key = $1 OR client_ip = $2 OR device = $3)
), pruned AS (
    -- Each attempt also deletes a few records that left the window: the table stays bounded
    -- without a background job, however many usernames and addresses are tried.
    DELETE FROM login_failures
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM login_failures WHERE failed_at <= now() - make_interval(secs => $4) LIMIT 10
    )) AND failed_at <= now() - make_interval(secs => $4)
), recorded AS (
    INSERT INTO login_failures (username_key, client_ip, device)
    SELECT $1, $2, $3 FROM counted
    WHERE CASE WHEN $3::text IS NULL THEN username_ip < $5 AND ip < $6 AND username < $7 ELSE device < $8 END
    RETURNING id
)
SELECT counted.*, (SELECT id FROM recorded) AS attempt, now() AS now FROM counted
"""
# A success: its own record goes, and the failures it proves were the owner's typos.
SUCCEEDED_SQL = """
DELETE FROM login_failures
WHERE id = $1 OR (username_key = $2 AND client_ip = $3) OR device = $4
"""
PRUNE_SQL = "DELETE FROM login_failures WHERE failed_at <= now() - make_interval(secs => $1)"


@dataclass(frozen=True)
class Limits:
    window: int = 900
    per_username_ip: int = 5
    per_ip: int = 20
    per_username: int = 100
    per_device: int = 5


@dataclass(frozen=True)
class Refusal:
    limit: str  # which count was reached: "username_ip", "ip", "username" or "device"
    retry_after: int  # seconds until the oldest counted failure leaves the window


@dataclass(frozen=True)
class Attempt:
    """A recorded attempt, let through to the password check."""

    id: int
    username_key: str
    address: str
    device: str | None


def username_key(username: str, user_id: int | None) -> str:
    """What an attempt on `username` counts as: its user when there is one, else the text."""
    if user_id is not None:
        return f"user:{user_id}"
    # The name's key (usernames.py: the one normalisation, also the users table's), so a name
    # counts the same whether or not a user has it; bounded, and never NUL.
    return usernames.throttle_key(username)


def address_key(address: str) -> str:
    """What one client's address counts as: IPv4 as it is, IPv4-mapped IPv6 as IPv4, other IPv6
    as its /64. Anything that is not an address (no address at all: a unix socket) counts as
    itself, bounded."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.replace("\x00", "\ufffd")[:_MAX_KEY_CHARS] or "-"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


async def begin(
    conn: asyncpg.Connection, username: str, user_id: int | None, address: str, device: str | None, limits: Limits
) -> Attempt | Refusal:
    """Record an attempt before its password is checked, or refuse it. `user_id`: the user the
    username names, if any; `address` the client's address (normalised here); `device` the
    device ID when the browser holds a device cookie for this user, else None."""
    key, addr = username_key(username, user_id), address_key(address)
    async with conn.transaction():
        if device is None:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_USERNAME, key)
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_ADDRESS, addr)
        else:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_DEVICE, device)
        row = await conn.fetchrow(
            BEGIN_SQL,
            key,
            addr,
            device,
            float(limits.window),
            limits.per_username_ip,
            limits.per_ip,
            limits.per_username,
            limits.per_device,
        )
    if row["attempt"] is not None:
        return Attempt(row["attempt"], key, addr, device)
    counts = [("ip", limits.per_ip)]
    counts += (
        [("device", limits.per_device)]
        if device
        else [("username_ip", limits.per_username_ip), ("username", limits.per_username)]
    )
    for name, limit in counts:
        if row[name] >= limit:
            leaves_at = row[f"{name}_oldest"].timestamp() + limits.window
            return Refusal(name, max(1, math.ceil(leaves_at - row["now"].timestamp())))
    raise AssertionError("an attempt was neither recorded nor over a limit")


async def succeeded(conn: asyncpg.Connection, attempt: Attempt) -> None:
    """The attempt's password was right: clear its record and the failures it accounts for."""
    await conn.execute(SUCCEEDED_SQL, attempt.id, attempt.username_key, attempt.address, attempt.device)


async def prune(conn: asyncpg.Connection, limits: Limits) -> int:
    """Delete every recorded failure older than the window; the number deleted."""
    return int((await conn.execute(PRUNE_SQL, float(limits.window))).split()[-1])

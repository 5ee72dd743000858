"""TCP keepalive and TCP_USER_TIMEOUT on asyncpg's connections, so that a connection a NAT or
load balancer dropped without a word (no FIN, no RST: node-postgres#2112) is found dead by the
kernel, not by a request that waits on it.

asyncpg has no argument for either, and does not read libpq's ``keepalives*`` or
``tcp_user_timeout`` parameters; its pool's ``init`` hook gets each new connection, whose socket
takes the options. They cost a request nothing: the kernel does the probing.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._types import Connection


async def tcp_keepalive(
    conn: Connection,
    *,
    idle: int = 10,
    interval: int = 5,
    count: int = 3,
    user_timeout: float | None = None,
) -> bool:
    """Set TCP keepalive (and, if given, TCP_USER_TIMEOUT) on the connection's socket. For a
    pool, as its ``init``: ``asyncpg.create_pool(dsn, init=partial(tcp_keepalive, idle=10,
    interval=5, user_timeout=0.5))``; for a connection of its own (a LISTEN connection), call it
    after connecting.

    An idle connection is probed after `idle` seconds, then every `interval` seconds; after
    `count` unanswered probes the kernel closes it (with `user_timeout` set, Linux closes it at
    the first probe that finds `user_timeout` passed since the last answer: `idle` + `interval`
    for a small `user_timeout`) and asyncpg's pool opens a new one when next asked. Keep `idle`
    below the shortest idle timeout on the path (AWS NAT gateways: 350 s; Azure load balancers:
    4 minutes by default): the probes then also keep the path's state alive. `user_timeout` is
    how long data sent may stay unacknowledged after its first retransmission (Linux,
    ``tcp(7)``) before the kernel closes the connection: a statement sent on a connection that
    died since its last probe fails then, and the storage retries a read on a new connection;
    keep it well under the storage's `database_timeout` (a third, say) and above a few
    round-trip times.

    :param conn: a connection of asyncpg's (a pool's proxy or a connection of its own).
    :param idle: whole seconds without traffic before the first probe (at least 1).
    :param interval: whole seconds between probes (at least 1).
    :param count: unanswered probes that end the connection (at least 1).
    :param user_timeout: seconds, or None to leave the system's default (none).
    :returns: whether the options were set: False for a connection over a Unix socket (no
        network path to lose), or one whose socket asyncpg does not expose.
    :raises ValueError: for an `idle` or `interval` below 1, a `count` below 1, or a
        `user_timeout` that is not positive.
    """
    if idle < 1 or interval < 1 or count < 1:
        raise ValueError("idle and interval must be at least 1 second, count at least 1")
    if user_timeout is not None and user_timeout <= 0:
        raise ValueError("user_timeout must be positive (or None)")
    transport = getattr(conn, "_transport", None)  # asyncpg exposes the socket nowhere else
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # Linux names; macOS has TCP_KEEPALIVE for the idle time, and no TCP_USER_TIMEOUT.
    idle_option = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for option, value in (
        (idle_option, idle),
        (getattr(socket, "TCP_KEEPINTVL", None), interval),
        (getattr(socket, "TCP_KEEPCNT", None), count),
        (getattr(socket, "TCP_USER_TIMEOUT", None), None if user_timeout is None else round(user_timeout * 1000)),
    ):
        if option is not None and value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return True

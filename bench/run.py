"""Run every benchmark scenario against raw ASGI, Django Channels and tether, in one run.

Use ``bench/run.sh`` (it builds bench/.venv and the Node client first); this module is what it runs:

    bench/run.sh                 # full run: writes docs/benchmarks.md and docs/img/*.png
    bench/run.sh --quick         # one small size of each scenario, one run (under two minutes)
    bench/run.sh --tiny --out /tmp/b   # the smoke test's sizes, written elsewhere

Each measurement starts the app under uvicorn (one worker) pinned to one core and the Node load
generator pinned to the other, and samples both processes' CPU time over the measured window.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLIENT = BENCH / "client" / "load.js"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# name -> (ASGI application, uvicorn --ws implementation, BENCH_APP)
APPS: dict[str, tuple[str, str, str]] = {
    "raw": ("bench.apps.raw:app", "websockets", "raw"),
    "raw-sansio": ("bench.apps.raw:app", "websockets-sansio", "raw"),
    "channels": ("bench.apps.channels_app:application", "websockets", "channels"),
    "tether": ("bench.apps.tether_asgi:application", "websockets", "tether"),
    "tether-sansio": ("bench.apps.tether_asgi:application", "websockets-sansio", "tether"),
}
# Cross-process fan-out: name -> (app, broker backend)
CROSS: dict[str, tuple[str, str]] = {
    "raw+redis": ("raw", "redis"),
    "channels+redis": ("channels", "redis"),
    "channels+pubsub": ("channels", "pubsub"),
    "tether+redis": ("tether", "redis"),
    "tether+postgres": ("tether", "postgres"),
    "tether+redis+history": ("tether", "redis+history"),  # the group keeps a history (docs/delivery.md)
    "tether+postgres+history": ("tether", "postgres+history"),
}
SCENARIOS = ("echo", "fanout", "pfanout", "cross", "idle", "hello", "handshake")
PROTOCOL_APPS = ("tether", "tether-sansio")  # pfanout: tether.v1 subscribers against plain ones


@dataclass
class Plan:
    """Sizes and durations of one run."""

    runs: int
    echo: list[int]
    echo_seconds: float
    warmup: float
    fanout: list[tuple[int, int]]  # (subscribers, messages)
    pfanout: list[tuple[int, int]]  # protocol against plain fan-out, same server
    cross: list[tuple[int, int]]
    idle: list[int]
    handshake_conns: int
    handshake_seconds: float


PLANS = {
    "full": Plan(3, [1, 50, 500], 5, 1, [(100, 200), (1000, 100), (5000, 20)], [(1000, 100)], [(1000, 20)],
                 [1000, 5000, 10000], 20, 5),
    "quick": Plan(1, [50], 2, 0.5, [(100, 50)], [(100, 50)], [(100, 20)], [1000], 10, 2),
    "tiny": Plan(1, [5], 0.5, 0.2, [(20, 5)], [(20, 5)], [(20, 5)], [50], 4, 0.5),
}  # fmt: skip


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_seconds(pid: int) -> float:
    """Time the main thread of ``pid`` has spent runnable but waiting for a CPU (other processes had it)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def pinned(core: int | None, argv: list[str]) -> list[str]:
    if core is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return argv
    return ["taskset", "-c", str(core), *argv]


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def profiled(server: Server, label: str) -> Iterator[None]:
    """Sample ``server`` with py-spy for the block when BENCH_PROFILE names ``label`` ("app:scenario")."""
    if os.environ.get("BENCH_PROFILE") != label:
        yield
        return
    folder = BENCH / "profiles"
    folder.mkdir(exist_ok=True)
    stem = folder / label.replace(":", "-")
    argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.pid), "--rate", "250",
            "--format", "raw", "--output", f"{stem}.folded", "--nonblocking"]  # fmt: skip
    spy = subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        summarize_profile(Path(f"{stem}.folded"), Path(f"{stem}.txt"))


def summarize_profile(folded: Path, out: Path, top: int = 40) -> None:
    """Write the functions with the most samples, by own time and by total time, from py-spy's raw stacks."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    if not folded.exists():
        return
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    lines = [f"{samples} samples", "", "own time:"]
    lines += [f"{100 * n / samples:5.1f}%  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines += ["", "total time (function and what it calls):"]
    lines += [f"{100 * n / samples:5.1f}%  {f}" for f, n in sorted(total.items(), key=lambda x: -x[1])[:top]]
    out.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def serve(app: str, backend: str = "memory", ws: str | None = None, scenario: str = "") -> Iterator[Server]:
    """Run ``app`` (a key of APPS) under uvicorn on the server core until the block ends."""
    target, impl, kind = APPS[app]
    port = free_port()
    env = {
        **os.environ,
        "BENCH_APP": kind,
        "BENCH_BACKEND": backend,
        "DJANGO_SETTINGS_MODULE": "bench.apps.settings",
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
            "--ws", ws or impl, "--workers", "1", "--lifespan", "auto", "--log-level", "warning",
            "--no-access-log"]  # fmt: skip
    log = Path(tempfile.mkstemp(prefix=f"bench-{app}-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(pinned(1, argv), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(app, port, process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{app} server did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        with profiled(server, f"{app}:{scenario}"):
            yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.unlink(missing_ok=True)


def client(mode: str, servers: list[Server], args: dict[str, Any], on_ready: Any = None) -> dict[str, Any]:
    """Run the Node load generator; returns its RESULT plus both sides' CPU over the measured window."""
    argv = ["node", str(CLIENT), mode]
    for key, value in args.items():
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    process = subprocess.Popen(
        pinned(0, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdin is not None
    result: dict[str, Any] = {}
    marks: dict[str, tuple[float, float, float, float]] = {}
    extra: dict[str, Any] = {}
    for line in process.stdout:
        word, _, rest = line.strip().partition(" ")
        if word in ("START", "STOP"):
            marks[word] = (
                time.monotonic(),
                sum(cpu_seconds(s.pid) for s in servers),
                cpu_seconds(process.pid),
                sum(wait_seconds(s.pid) for s in servers),
            )
        elif word == "READY" and on_ready is not None:
            extra = on_ready(process) or {}
        elif word == "RESULT":
            result = json.loads(rest)
    process.wait(30)
    if not result:
        stderr = process.stderr.read() if process.stderr else ""
        logs = "\n".join(s.log.read_text(errors="replace")[-2000:] for s in servers)
        raise RuntimeError(f"load.js {mode} failed ({process.returncode}): {stderr}\nserver log:\n{logs}")
    if "START" in marks and "STOP" in marks:
        (t0, s0, c0, w0), (t1, s1, c1, w1) = marks["START"], marks["STOP"]
        wall = max(t1 - t0, 1e-9)
        result["server_cpu"] = (s1 - s0) / wall  # 1.0 = one core busy all the window
        result["client_cpu"] = (c1 - c0) / wall
        result["server_wait"] = (w1 - w0) / wall  # ready to run, but the core was taken
    result.update(extra)
    return result


# -- scenarios -------------------------------------------------------------------------------------


def warm(server: Server) -> None:
    """One echo round trip, so lazy imports and first-request setup are not measured."""
    client("echo", [server], {"url": server.url("/ws/echo/"), "conns": 1, "duration": 0.05, "warmup": 0.05})


def run_echo(app: str, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    with serve(app, scenario="echo") as server:
        warm(server)
        for conns in plan.echo:
            r = client("echo", [server], {"url": server.url("/ws/echo/"), "conns": conns,
                                          "duration": plan.echo_seconds, "warmup": plan.warmup})  # fmt: skip
            rows.append({"size": conns, **r})
    return rows


def run_fanout(app: str, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    with serve(app, scenario="fanout") as server:
        warm(server)
        for subs, messages in plan.fanout:
            r = client("fanout", [server], {"url": server.url("/ws/sub/"), "pub-url": server.url("/ws/pub/"),
                                            "subs": subs, "messages": messages, "timeout": 120})  # fmt: skip
            rows.append({"size": subs, **r})
    return rows


def run_pfanout(app: str, plan: Plan, run: int) -> list[dict[str, Any]]:
    """Protocol fan-out against plain fan-out: both measured back to back in the same server process.

    The plain subscribers join the group in ``connect`` (``/ws/sub/``); the protocol ones offer
    ``tether.v1`` to a ``RealtimeView`` (``/ws/rt/``) and send one ``subscribe``; the same publisher
    broadcasts to the group. Each row is the protocol measurement with the plain one beside it
    (``plain_*``) and their ratios; the order alternates with the run, so neither always goes first.
    """
    rows = []
    with serve(app, scenario="pfanout") as server:
        warm(server)
        for subs, messages in plan.pfanout:
            common = {"pub-url": server.url("/ws/pub/"), "subs": subs, "messages": messages, "timeout": 120}
            order = [False, True] if run % 2 == 0 else [True, False]
            got = {p: client("fanout", [server], {"url": server.url("/ws/rt/" if p else "/ws/sub/"), **common,
                                                  **({"protocol": True} if p else {})}) for p in order}  # fmt: skip
            r, plain = got[True], got[False]
            r.update({f"plain_{k}": plain.get(k) for k in ("rate", "server_cpu", "client_cpu", "complete")})
            r["x_plain"] = r["rate"] / plain["rate"] if r["rate"] and plain["rate"] else None
            if r["x_plain"] and r.get("server_cpu") and plain.get("server_cpu"):
                r["x_plain_cpu"] = (r["rate"] / r["server_cpu"]) / (plain["rate"] / plain["server_cpu"])
            r["complete"] = r["complete"] and plain["complete"]
            rows.append({"size": subs, **r})
    return rows


def run_cross(name: str, plan: Plan) -> list[dict[str, Any]]:
    app, backend = CROSS[name]
    rows = []
    with serve(app, backend, scenario="cross") as one, serve(app, backend) as two:
        warm(one)
        warm(two)
        for subs, messages in plan.cross:

            def publish(_: Any, messages: int = messages) -> dict[str, Any]:
                env = {**os.environ, "BENCH_APP": APPS[app][2], "BENCH_BACKEND": backend, "PYTHONPATH": str(ROOT)}
                out = subprocess.run([sys.executable, "-m", "bench.publish", str(messages)], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=120)  # fmt: skip
                if out.returncode != 0:
                    raise RuntimeError(f"publisher failed: {out.stderr}")
                t0 = next(float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("T0"))
                return {"publish_t0_epoch_ms": t0}

            # 20 handshakes at a time: under 100, channels-redis answers some with HTTP 500 (its
            # connection pool loses connections); opening the sockets is not what is measured here.
            r = client("fanout", [one, two], {"url": f"{one.url('/ws/sub/')},{two.url('/ws/sub/')}",
                                              "subs": subs, "messages": messages, "external": True,
                                              "parallel": 20, "timeout": 180}, on_ready=publish)  # fmt: skip
            elapsed_ms = r["last_epoch_ms"] - r["publish_t0_epoch_ms"]
            r["last_ms"] = elapsed_ms
            r["rate"] = r["delivered"] / (elapsed_ms / 1000) if elapsed_ms > 0 else None
            rows.append({"size": subs, **r})
    return rows


def settle_rss(pid: int, timeout: float = 5.0) -> int:
    """RSS once two readings 0.3 s apart agree within 0.5% (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last = rss_bytes(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = rss_bytes(pid)
        if abs(now - last) <= 0.005 * last:
            return now
        last = now
    return last


def run_idle(app: str, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for conns in plan.idle:
        trace = BENCH / "profiles" / f"{app}-idle-{conns}.tracemalloc.txt"
        memtrace = bool(os.environ.get("BENCH_MEMTRACE"))  # see bench/apps/memtrace.py
        if memtrace:
            trace.parent.mkdir(exist_ok=True)
            os.environ["BENCH_TRACEMALLOC"] = str(trace)
        with serve(app, scenario="idle") as server:
            os.environ.pop("BENCH_TRACEMALLOC", None)
            warm(server)
            before = settle_rss(server.pid)
            if memtrace:
                os.kill(server.pid, signal.SIGUSR1)

            def measure(
                process: subprocess.Popen[str],
                server: Server = server,
                before: int = before,
                memtrace: bool = memtrace,
                trace: Path = trace,
            ) -> dict[str, Any]:
                after = settle_rss(server.pid)
                if memtrace:
                    trace.unlink(missing_ok=True)
                    os.kill(server.pid, signal.SIGUSR1)
                    deadline = time.monotonic() + 30
                    while not trace.exists() and time.monotonic() < deadline:
                        time.sleep(0.1)
                assert process.stdin is not None
                process.stdin.write("close\n")
                process.stdin.flush()
                return {"rss_before": before, "rss_after": after}

            r = client("idle", [server], {"url": server.url("/ws/echo/"), "conns": conns}, on_ready=measure)
            r["rate"] = (r["rss_after"] - r["rss_before"]) / max(r["conns"], 1) / 1024  # KiB per connection
            rows.append({"size": conns, **r})
    return rows


def run_handshake(app: str, plan: Plan, cookie: str | None) -> list[dict[str, Any]]:
    """Handshakes/s: with ``cookie``, a signed-in user's (``/ws/auth/``); without, an anonymous greeting."""
    path = "/ws/auth/" if cookie else "/ws/hello/"
    with serve(app, scenario="handshake" if cookie else "hello") as server:
        warm(server)
        args = {"url": server.url(path), "conns": plan.handshake_conns, "duration": plan.handshake_seconds,
                "warmup": plan.warmup, **({"cookie": cookie} if cookie else {})}  # fmt: skip
        r = client("handshake", [server], args)
        if r["handshakes"] == 0 or r["greeting"] != "bench":
            raise RuntimeError(f"{app}: no handshake on {path} completed: {r}")
        return [{"size": plan.handshake_conns, **r}]


# -- setup -----------------------------------------------------------------------------------------


def _migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import django; django.setup(); from django.core.management import call_command; " \
           "call_command('migrate', verbosity=0, interactive=False)"  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


def prepare_database() -> str:
    """Create the SQLite database, a user named "bench" and a logged-in session; returns the Cookie header."""
    data = BENCH / ".data"
    data.mkdir(exist_ok=True)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.apps.settings", "BENCH_APP": "raw", "PYTHONPATH": str(ROOT)}
    code = """
import django; django.setup()
from django.core.management import call_command
from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
call_command("migrate", verbosity=0, interactive=False)
User = get_user_model()
user = User.objects.filter(username="bench").first() or User.objects.create_user("bench", password="bench")
s = SessionStore()
s[SESSION_KEY] = str(user.pk)
s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
s[HASH_SESSION_KEY] = user.get_session_auth_hash()
s.create()
print(s.session_key)
"""
    if os.environ.get("BENCH_SESSIONS") == "postgres" and (why := prepare_postgres()):
        raise RuntimeError(f"BENCH_SESSIONS=postgres: {why}")
    env.setdefault("BENCH_PG_DB", "tether_bench")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"could not prepare the benchmark database:\n{out.stderr}")
    return f"sessionid={out.stdout.split()[-1]}"


def prepare_postgres() -> str | None:
    """Make sure the "tether_bench" database exists; returns why not when PostgreSQL is unusable."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True, connect_timeout=3) as c:
            if not c.execute("SELECT 1 FROM pg_database WHERE datname = 'tether_bench'").fetchone():
                c.execute("CREATE DATABASE tether_bench")
    except psycopg.Error as exc:
        return f"PostgreSQL at 127.0.0.1:5432 is unusable: {exc}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.apps.settings", "BENCH_APP": "tether",
           "BENCH_BACKEND": "postgres", "BENCH_PG_DB": "tether_bench", "PYTHONPATH": str(ROOT)}  # fmt: skip
    out = _migrate(env)  # tether's table for payloads over NOTIFY's 8000 bytes
    if out.returncode != 0:
        return f"migrating tether_bench failed: {out.stderr.strip().splitlines()[-1:]}"
    return None


def redis_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), timeout=1):
        return True
    return False


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("django-tether", "Django", "channels", "channels-redis", "daphne", "uvicorn", "websockets",
                 "httptools", "uvloop", "redis", "psycopg", "matplotlib"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    with contextlib.suppress(OSError, ValueError):
        found["ws (npm)"] = json.loads((BENCH / "client/node_modules/ws/package.json").read_text())["version"]
    return found


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "pinned": shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2}  # fmt: skip


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Results:
    plan: str
    meta: dict[str, Any]
    # scenario -> app -> size -> list of per-run rows
    data: dict[str, dict[str, dict[int, list[dict[str, Any]]]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, scenario: str, app: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.data.setdefault(scenario, {}).setdefault(app, {}).setdefault(row["size"], []).append(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one small size of each scenario, one run")
    size.add_argument("--tiny", action="store_true", help="the smoke test's sizes (seconds, numbers meaningless)")
    parser.add_argument("--runs", type=int, help="repetitions of each measurement (default: 3, quick: 1)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"scenarios to run (of {','.join(SCENARIOS)})")
    parser.add_argument("--apps", default=",".join(APPS), help=f"apps to run (of {','.join(APPS)})")
    parser.add_argument("--out", type=Path, help="write benchmarks.md, img/ and results.json here (default: docs/)")
    parser.add_argument("--from-json", type=Path, help="only rewrite the page and plots from a results.json")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "docs"
    if args.from_json:
        from bench.report import load_results, write_report

        write_report(*load_results(args.from_json), out)
        print(f"wrote {out / 'benchmarks.md'} from {args.from_json}")
        return 0

    plan_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    if args.runs:
        plan.runs = args.runs
    scenarios = [s for s in args.only.split(",") if s]
    apps = [a for a in args.apps.split(",") if a]
    for name in scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in apps:
        if name not in APPS:
            parser.error(f"unknown app {name!r}")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # 10000 idle sockets need as many descriptors, in the server and in the client
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = Results(plan_name, {"versions": versions(), "machine": machine(), "runs": plan.runs,
                                  "plan": plan.__dict__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})  # fmt: skip
    cookie = prepare_database()
    cross = [c for c in CROSS if CROSS[c][0] in apps]
    if "cross" in scenarios:
        if not redis_up():
            results.skipped["cross"] = "Redis at 127.0.0.1:6379 is down"
            cross = []
        elif why := prepare_postgres():
            results.skipped["tether+postgres"] = why
            cross = [c for c in cross if CROSS[c][1].partition("+")[0] != "postgres"]
    os.environ["BENCH_PG_DB"] = "tether_bench"

    started = time.monotonic()
    for run in range(plan.runs):
        for scenario in scenarios:
            names = cross if scenario == "cross" else apps
            if scenario == "pfanout":
                names = [a for a in apps if a in PROTOCOL_APPS]
            for name in names:
                label = f"run {run + 1}/{plan.runs} {scenario:9} {name:15}"
                t = time.monotonic()
                try:
                    if scenario == "echo":
                        rows = run_echo(name, plan)
                    elif scenario == "fanout":
                        rows = run_fanout(name, plan)
                    elif scenario == "pfanout":
                        rows = run_pfanout(name, plan, run)
                    elif scenario == "cross":
                        rows = run_cross(name, plan)
                    elif scenario == "idle":
                        rows = run_idle(name, plan)
                    elif scenario == "hello":
                        rows = run_handshake(name, plan, None)
                    else:
                        rows = run_handshake(name, plan, cookie)
                except Exception as exc:
                    results.skipped[f"{scenario}/{name}"] = str(exc).splitlines()[0] if str(exc) else repr(exc)
                    print(f"{label} FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                results.add(scenario, name, rows)
                summary = "  ".join(f"{r['size']}: {r['rate']:.1f}" for r in rows if r.get("rate") is not None)
                print(f"{label} {time.monotonic() - t:5.1f}s  {summary}", flush=True)
    results.meta["seconds"] = round(time.monotonic() - started, 1)

    from bench.report import write_report

    write_report(results.plan, results.meta, results.data, results.skipped, out)
    print(f"wrote {out / 'benchmarks.md'} in {results.meta['seconds']}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

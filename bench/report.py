"""Turn a run's measurements into docs/benchmarks.md, docs/img/bench-*.png and results.json.

Every figure is shown three ways: the measured value (median of the runs, with min-max), its ratio
to the raw loop on the same server implementation (``raw`` under ``--ws websockets``, ``raw-sansio``
under ``--ws websockets-sansio``) and to ``channels``, all measured in the same run.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

Data = dict[str, dict[str, dict[int, list[dict[str, Any]]]]]

# scenario -> title, size label, main metric label, higher-is-better, extra columns (key, label, format)
SCENARIO_INFO: dict[str, dict[str, Any]] = {
    "echo": {"title": "Echo", "size": "connections", "unit": "round trips/s", "higher": True,
             "extra": [("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}")]},
    "fanout": {"title": "Fan-out in one process", "size": "subscribers", "unit": "deliveries/s", "higher": True,
               "extra": [("messages", "messages", "{:.0f}"), ("last_ms", "last delivery ms", "{:.0f}")]},
    "pfanout": {"title": "Protocol fan-out (tether.v1) against plain fan-out", "size": "subscribers",
                "unit": "deliveries/s", "higher": True,
                "extra": [("messages", "messages", "{:.0f}"), ("plain_rate", "plain deliveries/s", "{:,.0f}"),
                          ("x_plain", "x plain", "{:.2f}"), ("x_plain_cpu", "x plain per CPU-s", "{:.2f}")]},
    "cross": {"title": "Fan-out across processes", "size": "subscribers", "unit": "deliveries/s", "higher": True,
              "extra": [("messages", "messages", "{:.0f}"), ("last_ms", "last delivery ms", "{:.0f}")]},
    "idle": {"title": "Idle connections", "size": "connections", "unit": "KiB per connection", "higher": False,
             "extra": [("open_s", "open all s", "{:.1f}")]},
    "hello": {"title": "Handshakes, anonymous", "size": "concurrent", "unit": "handshakes/s",
              "higher": True, "extra": [("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}")]},
    "handshake": {"title": "Handshakes with session auth", "size": "concurrent", "unit": "handshakes/s",
                  "higher": True, "extra": [("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}")]},
}  # fmt: skip
BASELINES = {"cross": ("raw+redis", "channels+redis")}
DEFAULT_BASELINES = ("raw", "channels")
# scenario -> (min ratio to raw, min ratio to channels); for idle, maxima (less memory is better)
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "echo": (0.9, 1.5),
    "fanout": (0.8, 5.0),
    "cross": (None, 5.0),
    "idle": (1.2, 0.6),
    "handshake": (0.7, 2.0),  # x the raw loop's *anonymous* handshakes on the same server; x channels' authenticated
}


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(data: Data) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """scenario -> app -> size -> medians (plus min/max of the main figure, ``rate``)."""
    out: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for scenario, apps in data.items():
        keys = ["rate", "server_cpu", "client_cpu", "server_wait"] + [k for k, _, _ in SCENARIO_INFO[scenario]["extra"]]
        for app, sizes in apps.items():
            for size, rows in sizes.items():
                rates = [r["rate"] for r in rows if r.get("rate") is not None]
                cell = {k: _median(rows, k) for k in keys}
                per_cpu = [r["rate"] / r["server_cpu"] for r in rows if r.get("rate") and r.get("server_cpu")]
                cell["per_cpu"] = statistics.median(per_cpu) if per_cpu and scenario != "idle" else None
                cell.update(min=min(rates, default=None), max=max(rates, default=None), runs=len(rows),
                            complete=all(r.get("complete", True) for r in rows))  # fmt: skip
                out.setdefault(scenario, {}).setdefault(app, {})[int(size)] = cell
    return out


def ratio(
    summary: dict[str, dict[int, dict[str, Any]]], app: str, base: str, size: int, key: str = "rate"
) -> float | None:
    """``app``'s figure over ``base``'s at ``size`` (``key="per_cpu"``: per server CPU-second)."""
    a = summary.get(app, {}).get(size, {}).get(key)
    b = summary.get(base, {}).get(size, {}).get(key)
    return a / b if a is not None and b else None


def raw_for(scenario: str, app: str) -> str:
    """The raw loop to compare ``app`` with: the same server implementation (and broker, across processes)."""
    if scenario == "cross":
        return BASELINES["cross"][0]
    return "raw-sansio" if app.endswith("-sansio") else "raw"


def raw_ratio(
    summaries: dict[str, dict[str, dict[int, dict[str, Any]]]], scenario: str, app: str, size: int, key: str = "rate"
) -> float | None:
    """``app`` against the raw loop on its own server; authenticated handshakes against raw's anonymous ones."""
    base_scenario = "hello" if scenario == "handshake" else scenario
    a = summaries.get(scenario, {}).get(app, {}).get(size, {}).get(key)
    b = summaries.get(base_scenario, {}).get(raw_for(scenario, app), {}).get(size, {}).get(key)
    return a / b if a is not None and b else None


def _fmt(value: float | None, spec: str = "{:,.0f}") -> str:
    return "-" if value is None else spec.format(value)


def _rate_spec(value: float | None) -> str:
    return "{:,.1f}" if value is not None and abs(value) < 100 else "{:,.0f}"


def _plot(scenario: str, summaries: dict[str, dict[str, dict[int, dict[str, Any]]]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    info = SCENARIO_INFO[scenario]
    summary = summaries[scenario]
    base_channels = BASELINES.get(scenario, DEFAULT_BASELINES)[1]
    apps = list(summary)
    sizes = sorted({size for cells in summary.values() for size in cells})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / max(len(apps), 1)
    for i, app in enumerate(apps):
        xs = [j + (i - (len(apps) - 1) / 2) * width for j in range(len(sizes))]
        cells = [summary[app].get(s, {}) for s in sizes]
        values = [c.get("rate") or 0 for c in cells]
        low = [max(v - (c.get("min") or v), 0) for v, c in zip(values, cells, strict=True)]
        high = [max((c.get("max") or v) - v, 0) for v, c in zip(values, cells, strict=True)]
        axes[0].bar(xs, values, width, label=app, yerr=[low, high], capsize=2)
        axes[1].bar(xs, [raw_ratio(summaries, scenario, app, s) or 0 for s in sizes], width, label=app)
        axes[2].bar(xs, [ratio(summary, app, base_channels, s) or 0 for s in sizes], width, label=app)
    axes[0].set_title(f"{info['title']}: {info['unit']}\n(median, min-max)")
    better = "higher" if info["higher"] else "lower"
    targets = TARGETS.get(scenario, (None, None))
    raw_title = "raw's anonymous handshakes" if scenario == "handshake" else "raw on the same server"
    for ax, base, target in ((axes[1], raw_title, targets[0]), (axes[2], base_channels, targets[1])):
        ax.set_title(f"ratio to {base} ({better} is better)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        if target is not None:
            ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target}x")
    for ax in axes:
        ax.set_xticks(range(len(sizes)), [f"{s} {info['size']}" for s in sizes], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _verdict(value: float | None, target: float | None, higher: bool) -> str:
    if target is None or value is None:
        return "-"
    met = value >= target if higher else value <= target
    return f"{_fmt(value, '{:.2f}')} {'met' if met else '**missed**'}"


def _targets_table(summaries: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> list[str]:
    lines = [
        "| scenario | size | app | target x raw (same server) | x raw | x raw per CPU-s | target x channels "
        "| x channels | x channels per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, (t_raw, t_channels) in TARGETS.items():
        summary = summaries.get(scenario)
        if not summary:
            continue
        base_channels = BASELINES.get(scenario, DEFAULT_BASELINES)[1]
        higher = SCENARIO_INFO[scenario]["higher"]
        sign = ">=" if higher else "<="
        for app in [a for a in summary if a.startswith("tether")]:
            for size in sorted(summary[app]):
                cols = [scenario, str(size), app, f"{sign} {t_raw}" if t_raw is not None else "-"]
                cols.append(_verdict(raw_ratio(summaries, scenario, app, size), t_raw, higher))
                cols.append(_verdict(raw_ratio(summaries, scenario, app, size, "per_cpu"), t_raw, higher))
                cols.append(f"{sign} {t_channels}" if t_channels is not None else "-")
                cols.append(_verdict(ratio(summary, app, base_channels, size), t_channels, higher))
                cols.append(_verdict(ratio(summary, app, base_channels, size, "per_cpu"), t_channels, higher))
                lines.append("| " + " | ".join(cols) + " |")
    return lines


def load_results(path: Path) -> tuple[str, dict[str, Any], Data, dict[str, str]]:
    """Read a results.json written by ``write_report`` (sizes back to ints)."""
    raw = json.loads(path.read_text())
    data = {
        scenario: {app: {int(size): rows for size, rows in sizes.items()} for app, sizes in apps.items()}
        for scenario, apps in raw["data"].items()
    }
    return raw["plan"], raw["meta"], data, raw["skipped"]


def write_report(plan: str, meta: dict[str, Any], data: Data, skipped: dict[str, str], out: Path) -> None:
    """Write ``out/benchmarks.md``, ``out/img/bench-<scenario>.png`` and ``out/results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    # The docs folder gets the page and plots only; the measurements behind them go to bench/.
    results = BENCH / "results.json" if out.resolve() == (BENCH.parent / "docs").resolve() else out / "results.json"
    results.write_text(json.dumps({"plan": plan, "meta": meta, "data": data, "skipped": skipped}, indent=1))
    summaries = {scenario: summarize({scenario: apps})[scenario] for scenario, apps in data.items() if apps}
    machine, versions = meta["machine"], meta["versions"]
    lines = [
        "# Benchmarks",
        "",
        "tether against the raw ASGI loop (the floor: what Python does on the same server with no framework)",
        "and Django Channels, measured in one run on the same server and load generator.",
        "Regenerate this page with `bench/run.sh` (see [bench/README.md](../bench/README.md)).",
        "",
        f"Run: {meta['date']}, plan `{plan}`, {meta['runs']} run(s) per figure (median, min-max), "
        f"{meta.get('seconds', '?')} s. Machine: {machine['cores']} cores ({machine['cpu'] or 'unknown CPU'}), "
        f"Linux {machine['kernel']}; "
        + ("server pinned to core 1, load generator to core 0 (`taskset`)." if machine["pinned"] else "no pinning."),
        "",
        "Server: uvicorn, one worker, `--ws websockets` for `raw`, `channels` and `tether`; `raw-sansio` and "
        "`tether-sansio` run under `--ws websockets-sansio`, the implementation tether's docs recommend. Every "
        "ratio to raw is taken against the raw loop on the *same* implementation (tether-sansio against "
        "raw-sansio), so no app is credited with the server's speed.",
        "Load generator: Node.js with the `ws` package (`bench/client/load.js`). *server CPU* and *client CPU* "
        "are the share of one core each process used over the measured window: the client must stay "
        "well below 100% for the figure to measure the server. *per server CPU-s* divides the figure by the "
        "server's CPU share: on a busy machine a process waits for its core, which lowers throughput but "
        "not the work done per CPU-second, so that column is the steadier comparison. *server waited* is "
        "the share of the window the server was ready to run but its core was busy with other processes "
        "(`/proc/<pid>/schedstat`): high values mean a noisy machine.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    for note in meta.get("notes", []):
        lines += [f"> {note}", ""]
    if plan != "full":
        lines += [f"> This page was written by a `{plan}` run: sizes are small and figures are noisy.", ""]
    lines += ["## Targets", "", *_targets_table(summaries), ""]
    for scenario, summary in summaries.items():
        info = SCENARIO_INFO[scenario]
        base_channels = BASELINES.get(scenario, DEFAULT_BASELINES)[1]
        raw_label = "x raw anonymous (same server)" if scenario == "handshake" else "x raw (same server)"
        lines += [f"## {info['title']}", "", _DESCRIPTIONS[scenario], ""]
        extra_cols = "".join(f" {label} |" for _, label, _ in info["extra"])
        lines.append(f"| {info['size']} | app | {info['unit']} (min-max) |{extra_cols} {raw_label} | "
                     f"x {base_channels} | server CPU | server waited | client CPU | per server CPU-s | {raw_label} per CPU-s | "
                     f"x {base_channels} per CPU-s |")  # fmt: skip
        lines.append("|---" * (11 + len(info["extra"])) + "|")
        for size in sorted({s for cells in summary.values() for s in cells}):
            for app, cells in summary.items():
                cell = cells.get(size)
                if cell is None:
                    continue
                spec = _rate_spec(cell["rate"])
                value = f"{_fmt(cell['rate'], spec)} ({_fmt(cell['min'], spec)}-{_fmt(cell['max'], spec)})"
                if not cell["complete"]:
                    value += " incomplete"
                extras = "".join(f" {_fmt(cell.get(k), f)} |" for k, _, f in info["extra"])
                lines.append(
                    f"| {size} | {app} | {value} |{extras} {_fmt(raw_ratio(summaries, scenario, app, size), '{:.2f}')} | "
                    f"{_fmt(ratio(summary, app, base_channels, size), '{:.2f}')} | "
                    f"{_fmt(cell['server_cpu'] and cell['server_cpu'] * 100, '{:.0f}%')} | "
                    f"{_fmt(cell['server_wait'] and cell['server_wait'] * 100, '{:.0f}%')} | "
                    f"{_fmt(cell['client_cpu'] and cell['client_cpu'] * 100, '{:.0f}%')} | "
                    f"{_fmt(cell['per_cpu'], _rate_spec(cell['per_cpu']))} | "
                    f"{_fmt(raw_ratio(summaries, scenario, app, size, 'per_cpu'), '{:.2f}')} | "
                    f"{_fmt(ratio(summary, app, base_channels, size, 'per_cpu'), '{:.2f}')} |"
                )
        image = out / "img" / f"bench-{scenario}.png"
        if _plot(scenario, summaries, image):
            lines += ["", f"![{info['title']}](img/{image.name})"]
        lines.append("")
    if skipped:
        lines += ["## Not measured in this run", ""]
        lines += [f"- `{name}`: {why}" for name, why in skipped.items()]
        lines.append("")
    notes = BENCH / "NOTES.md"
    if plan == "full" and notes.exists():
        lines += [notes.read_text().strip(), ""]
    (out / "benchmarks.md").write_text("\n".join(lines))


_DESCRIPTIONS = {
    "echo": "Each connection sends a 32-byte text frame and waits for the echo before sending the next "
    "(closed loop). Figure: completed round trips per second over the window; p50/p99 round-trip latency.",
    "fanout": "N subscribers in one group; one more connection publishes M messages back to back, and the "
    "server sends each to every subscriber. Figure: deliveries per second, from the first publish to the "
    "moment the last subscriber has the last message (*last delivery*).",
    "pfanout": "The fan-out above with protocol subscribers: each offers the subprotocol `tether.v1` to a "
    "`RealtimeView` route and subscribes with one command (`can_subscribe` allows the group); the same "
    "publisher broadcasts to the group, and each subscriber gets every message as a `message` push. In the "
    "same server process, back to back, the plain fan-out of tether's `SocketView` (`join` in `connect`) is "
    "measured with the same sizes: *x plain* is protocol over plain deliveries/s (median of the per-run "
    "ratios), *x plain per CPU-s* the same per server CPU-second. Only tether apps; no raw or Channels "
    "equivalent, so their columns are empty.",
    "cross": "Two server processes (both on the server core), subscribers split between them; a third "
    "process publishes M messages through the broker: Redis for raw (its own PUBLISH/SUBSCRIBE), "
    "channels-redis (`RedisChannelLayer` and `RedisPubSubChannelLayer`) for Channels, tether's Redis and "
    "PostgreSQL backends. Ratios are to `raw+redis` and `channels+redis`. Figure: deliveries per second "
    "from the publisher's first send (after it has connected to the broker) to the last delivery.",
    "idle": "N connections opened and left idle; figure: growth of the server's resident memory (RSS) "
    "divided by N, in KiB (lower is better, so a ratio below 1 is better).",
    "hello": "Concurrent loops of: open a connection with no cookie, the server accepts and greets, close. "
    "Figure: completed handshakes per second: the floor every authenticated handshake is measured against.",
    "handshake": "Concurrent loops of: open a connection carrying a Django session cookie, the server "
    "loads the session and user from the database (SQLite) and greets the user by name, close "
    "(tether: `@login_required` with the Origin check on; Channels: `AllowedHostsOriginValidator("
    "AuthMiddlewareStack(...))`; raw does the same lookups by hand). Figure: completed handshakes per "
    "second; the raw ratio is to raw's *anonymous* handshakes on the same server implementation.",
}

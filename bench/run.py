"""Run every benchmark once and write the results (Markdown and JSON) under bench/results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sqlalchemy

from bench.backlog import bench_recovery, bench_scale_point
from bench.cli import bench_cli
from bench.endtoend import bench_baseline, bench_gated
from bench.enqueue import bench_enqueue
from bench.gate import bench_gate
from bench.history import append, commit, plot
from bench.report import GOALS, markdown
from bench.simulate import bench_simulate
from bench.sizes import SIZES, Size
from bench.store import CAPS, fresh_database, migrate, write_policy
from policies.config import CAP_MAXIMA
from scheduler import constants
from scheduler.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
#: Messages per dispatch task here. The null provider answers at once; with a real one,
#: whose calls take a while, the smaller default keeps decisions fresh when they are sent.
#: End to end, 400 ran about an eighth faster than 200 (4,213 and 4,341 msg/s against
#: 3,756 and 3,808 in alternate runs).
DISPATCH_BATCH = 400


def machine() -> dict[str, Any]:
    with open("/proc/meminfo") as handle:
        total_kib = int(handle.readline().split()[1])
    with sqlalchemy.create_engine(os.environ["BENCH_POSTGRES_URL"]).connect() as conn:
        postgres = conn.exec_driver_sql("SHOW server_version").scalar_one()
    import redis

    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    redis_version = client.info("server")["redis_version"]
    client.close()
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(total_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "redis": redis_version,
        "celery": version("celery"),
        "sqlalchemy": version("sqlalchemy"),
        "healthgate": version("healthgate"),
    }


def settings_for(root: Path, name: str, size: Size, caps: dict[str, int] | None = None) -> Settings:
    """A fresh database, a policy file and a data directory for one scenario."""
    admin = os.environ["BENCH_POSTGRES_URL"]
    url = fresh_database(admin, os.environ.get("BENCH_DATABASE", "healthgate_bench"))
    folder = root / name
    folder.mkdir()
    redis_url = os.environ["BENCH_REDIS_URL"]
    settings = Settings(
        data_dir=folder / "data",
        policy_file=write_policy(folder / "healthgate.toml", size.lines, caps),
        database_url=url,
        broker_url=redis_url,
        redis_url=redis_url,
        dispatch_batch=int(os.environ.get("BENCH_DISPATCH_BATCH", DISPATCH_BATCH)),
        claim_limit=int(os.environ.get("BENCH_CLAIM_LIMIT", 2 * constants.CLAIM_LIMIT)),
    )
    migrate(settings)
    return settings


def run(size: Size, only: set[str] | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": size.name,
        "commit": commit(),
        "machine": machine(),
        "sizes": {k: v for k, v in vars(size).items() if k != "name"},
        # Other work on the machine shows in every figure: its one-minute load average
        # at the start and the end of the run says how much there was.
        "load": {"start": round(os.getloadavg()[0], 2)},
    }

    def wanted(name: str) -> bool:
        return only is None or name in only

    with tempfile.TemporaryDirectory(prefix="healthgate-bench-") as tmp:
        root = Path(tmp)
        if wanted("cli"):
            results["cli"] = bench_cli(root, size.cli_runs)
            _say("cli", results["cli"])
        if wanted("gate"):
            policy = write_policy(root / "gate.toml", size.lines)
            results["gate"] = bench_gate(policy, size.gate_evaluations)
            _say("gate", results["gate"])
        if wanted("enqueue"):
            settings = settings_for(root, "enqueue", size)
            results["enqueue"] = bench_enqueue(
                settings,
                size.enqueue_single,
                size.enqueue_bulk,
                size.enqueue_chunk,
                size.lines,
                size.enqueue_rounds,
                size.enqueue_routed,
            )
            _say("enqueue", results["enqueue"])
        if wanted("end_to_end"):
            baseline = bench_baseline(os.environ["BENCH_REDIS_URL"], size.end_to_end)
            _say("baseline", baseline)
            gated = bench_gated(settings_for(root, "e2e", size), size.end_to_end, size.chats)
            _say("gated", gated)
            results["end_to_end"] = {
                "baseline": baseline,
                "gated": gated,
                "ratio": round(gated["per_second"] / baseline["per_second"], 2),
            }
        if wanted("scale"):
            points = []
            for waiting in size.scale_waiting:
                settings = settings_for(root, f"scale-{waiting}", size)
                points.append(bench_scale_point(settings, size.chats, waiting, size.scale_due))
                _say("scale", points[-1])
            results["scale"] = {
                "points": points,
                "ratio": round(points[-1]["us_per_decision"] / points[0]["us_per_decision"], 2),
            }
        if wanted("recovery"):
            # The backlog (20 a recipient at full size) goes at once: only line caps bind.
            caps = {
                **CAPS,
                "sends_per_recipient_per_minute": CAP_MAXIMA["sends_per_recipient_per_minute"],
                "sends_per_recipient_per_day": CAP_MAXIMA["sends_per_recipient_per_day"],
            }
            settings = settings_for(root, "recovery", size, caps)
            results["recovery"] = bench_recovery(settings, size.chats, size.recovery, size.lines)
            _say("recovery", results["recovery"])
        if wanted("simulate"):
            # BENCH_SIMULATE_MESSAGES / _DAYS run a part of the size's world.
            messages = int(os.environ.get("BENCH_SIMULATE_MESSAGES", size.simulate_messages))
            days = float(os.environ.get("BENCH_SIMULATE_DAYS", size.simulate_days))
            results["simulate"] = bench_simulate(root, messages, days, size.lines)
            _say("simulate", {k: v for k, v in results["simulate"].items() if k != "summaries"})
    results["goals"] = GOALS
    results["load"]["end"] = round(os.getloadavg()[0], 2)
    return results


def _say(name: str, figures: dict[str, Any]) -> None:
    print(f"{time.strftime('%H:%M:%S')} {name}: {json.dumps(figures)}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--only", nargs="*", help="cli gate enqueue end_to_end scale recovery simulate"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument("--batch", type=int, help="messages per dispatch task (a setting)")
    parser.add_argument("--note", default="", help="conditions of the run, kept with it")
    args = parser.parse_args(argv)
    os.environ.setdefault(
        "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    if args.batch:
        os.environ["BENCH_DISPATCH_BATCH"] = str(args.batch)
    results = run(SIZES[args.size], set(args.only) if args.only else None)
    results["note"] = args.note
    args.out.mkdir(parents=True, exist_ok=True)
    history = args.out / "history.csv"
    append(history, results)
    plot(history, args.out / f"history-{args.size}.png", args.size)
    (args.out / f"{args.size}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results, history)
    (args.out / f"{args.size}.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()

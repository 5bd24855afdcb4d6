"""``./run chaos [kill|postgres|broker|hostile|all] [options]``: the chaos suite.

Each scenario starts a stack of its own (Postgres and broker on loopback ports in a temporary
directory, the local Momento server, the receiver, workers and beat), does its damage, waits for
the pipeline to drain, prints its counts and PASS/FAIL lines, and tears everything down. Exit
status 0 only when every target of every scenario was met (1: a target missed, 2: the harness
itself failed). Environment variables reach the pipeline processes, e.g.
``PIPELINE_VISIBILITY_TIMEOUT_S=20 ./run chaos kill``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
import traceback
from typing import Any

from benchmarks.chaos.attack import run_hostile
from benchmarks.chaos.checks import Report
from benchmarks.chaos.scenarios import Options, run_kill, run_outage
from benchmarks.chaos.stack import Stack, StackOptions

SCENARIOS = ("kill", "postgres", "broker", "hostile")


def run_scenario(name: str, stack: Stack, opts: Options) -> Report:
    """Run one scenario on a running stack."""
    if name == "kill":
        return run_kill(stack, opts)
    if name in ("postgres", "broker"):
        return run_outage(stack, opts, name)
    if name == "hostile":
        return run_hostile(stack, opts)
    raise ValueError(f"unknown scenario {name!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./run chaos", description=(__doc__ or "").split("\n\n")[1].replace("\n", " ")
    )
    parser.add_argument("scenario", nargs="?", default="all", choices=[*SCENARIOS, "all"])
    parser.add_argument("--events", type=int, default=50_000, help="distinct events (traffic)")
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--kills", type=int, default=10, help="worker kills (kill)")
    parser.add_argument(
        "--outage-s", type=float, default=None, help="outage length (postgres 30, broker 20)"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="events/s (postgres, broker: 1000; kill: unpaced)"
    )
    parser.add_argument("--requests", type=int, default=10_000, help="hostile requests")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="`pipeline worker` processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    parser.add_argument(
        "--drain-timeout", type=float, default=300, help="s to wait for storage and outbox"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document at the end")
    parser.add_argument("--keep-home", action="store_true", help="keep the stack's temp dir")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    """The scenario options of the CLI flags."""
    return Options(
        events=args.events,
        topics=args.topics,
        kills=args.kills,
        outage_s=args.outage_s,
        rate=args.rate,
        seed=args.seed,
        requests=args.requests,
        drain_timeout_s=args.drain_timeout,
    )


def _terminate(signum: int, _frame: Any) -> None:
    # Once: a second Ctrl-C must not cut the cleanup short (it is bounded: ~10 s a process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Cleanup runs on either, as for Ctrl-C; SIGINT too, as a shell starts background jobs
    # with it ignored, which Python would otherwise keep.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    opts = options_from(args)
    stack_options = StackOptions(args.workers, args.concurrency, keep_home=args.keep_home)
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds only the JSON

    def log(*parts: object) -> None:
        print(*parts, file=out, flush=True)

    log("command: ./run chaos", shlex.join(sys.argv[1:]))
    passed = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
    log("environment passed to the pipeline:", passed or "(defaults)")
    reports: list[dict[str, Any]] = []
    status = 0
    for name in names:
        started, load_before = time.monotonic(), os.getloadavg()[0]
        log(f"-- {name}")
        try:
            with Stack(stack_options) as stack:
                report = run_scenario(name, stack, opts)
        except KeyboardInterrupt:
            log("interrupted; everything started was stopped")
            return 130
        except Exception:
            log(f"{name}: the harness failed:\n{traceback.format_exc()}")
            reports.append({"scenario": name, "ok": False, "error": traceback.format_exc()})
            status = 2
            continue
        report.figures["scenario wall time s"] = time.monotonic() - started
        # 2 cores shared with whatever else runs: the time targets depend on it.
        report.figures["load average before/after"] = f"{load_before:.1f}/{os.getloadavg()[0]:.1f}"
        for line in report.lines():
            log(line)
        reports.append(report.as_json())
        if not report.ok and status == 0:
            status = 1
    if args.json:
        print(json.dumps({"ok": status == 0, "reports": reports}, indent=2, default=str))
    else:
        print("all targets met" if status == 0 else "TARGETS MISSED" if status == 1 else "ERROR")
    return status


if __name__ == "__main__":
    sys.exit(main())

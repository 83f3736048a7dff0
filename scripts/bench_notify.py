#!/usr/bin/env python3
"""A notification burst to many WatchAlerts subscribers (docs/benchmarks.md).

On a fresh database, opens --subscribers WatchAlerts streams, then creates --rules rules that
fire at once (events > -1 over 60 s), waits until every subscriber holds
every FIRING, raises the thresholds so that all resolve, and waits for
every RESOLVED: 2 × rules notifications, each to every subscriber. Prints
how long each half took to reach the last subscriber, then deletes the
rules. scripts/bench-notify.sh runs it beside `pulse loadgen` to see what
the burst does to the ingest acknowledgement latency.

    .venv/bin/python3 scripts/bench_notify.py --target 127.0.0.1:50051
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "python"))
from client import load_stubs  # noqa: E402  (the stubs, generated from proto/)


async def watch(stub, request, counts, index, ready):
    """Counts the notifications one subscriber receives, by state."""
    call = stub.WatchAlerts(request)
    ready.release()
    try:
        async for note in call:
            counts[index][note.state] = counts[index].get(note.state, 0) + 1
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            print(f"subscriber {index}: {error.code()} {error.details()}", file=sys.stderr)


async def until_all(counts, state, want, timeout):
    """Seconds until every subscriber has `want` notifications of `state`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(c.get(state, 0) >= want for c in counts):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    got = min(c.get(state, 0) for c in counts)
    raise SystemExit(f"timed out: the slowest subscriber has {got} of {want}")


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=1100)
    parser.add_argument("--channels", type=int, default=4, help="HTTP/2 connections the streams share")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    s = load_stubs()
    alerts, common = s["alerts"], s["common"]
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    stubs = [s["alerts_grpc"].AlertServiceStub(c) for c in channels]
    admin = stubs[0]

    # A fresh database holds no notification: every one counted is the burst's.
    counts = [{} for _ in range(args.subscribers)]
    ready = asyncio.Semaphore(0)
    watchers = [
        asyncio.create_task(watch(stubs[i % len(stubs)], alerts.WatchAlertsRequest(after_id=0), counts, i, ready))
        for i in range(args.subscribers)
    ]
    for _ in range(args.subscribers):
        await ready.acquire()
    await asyncio.sleep(2)  # the streams are open on the server

    def rule(i, threshold, rule_id=""):
        return alerts.AlertRule(
            id=rule_id, name=f"burst {i}", metric=common.METRIC_EVENTS, window_seconds=60,
            comparison=alerts.COMPARISON_GREATER_THAN, threshold=threshold, enabled=True)

    print(f"{args.subscribers} subscribers on {args.channels} connections; creating {args.rules} rules",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    ids = []
    for i in range(args.rules):
        created = await admin.CreateAlertRule(alerts.CreateAlertRuleRequest(rule=rule(i, -1.0)))
        ids.append(created.rule.id)
    firing = await until_all(counts, alerts.ALERT_STATE_FIRING, args.rules, args.timeout)
    print(f"FIRING: {args.rules} × {args.subscribers} delivered {firing + 0:.1f} s after the rules were "
          f"created ({time.monotonic() - started:.1f} s from the first)", flush=True)
    for i, rule_id in enumerate(ids):
        await admin.UpdateAlertRule(alerts.UpdateAlertRuleRequest(rule=rule(i, 1e12, rule_id)))
    resolved = await until_all(counts, alerts.ALERT_STATE_RESOLVED, args.rules, args.timeout)
    print(f"RESOLVED: {args.rules} × {args.subscribers} delivered {resolved:.1f} s after the updates", flush=True)
    for rule_id in ids:
        await admin.DeleteAlertRule(alerts.DeleteAlertRuleRequest(id=rule_id))
    for w in watchers:
        w.cancel()
    for c in channels:
        await c.close()


if __name__ == "__main__":
    asyncio.run(main())

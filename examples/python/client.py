#!/usr/bin/env python3
"""A small Pulse client in Python (grpcio): streams events, reads a metric,
and watches alerts.

    python3 -m venv .venv && .venv/bin/pip install grpcio grpcio-tools
    .venv/bin/python3 examples/python/client.py --target 127.0.0.1:50051 --events 100

(scripts/setup makes that .venv, with pinned versions.)

The stubs are generated at run time from ../../proto into a temporary
folder with grpcio-tools, so they always match the server's contract.
What it does:
  1. creates an alert rule "python example: traffic" (events > 0 over 60 s),
  2. starts WatchAlerts for that rule in a thread (replay from id 0, then live),
  3. streams --events events (pageviews, clicks, purchases) in batches of 10
     over one IngestEvents client stream and prints the counts,
  4. reads the event count of the last 5 minutes with GetMetrics,
  5. waits for the rule's FIRING notification, prints it and deletes the rule.
Exits non-zero if any step fails or no notification arrives in --timeout s.
tests/api/dashboard.rs runs it against a test server.
"""

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    """Generates the pulse.v1 modules into a temp dir and imports them."""
    out = tempfile.mkdtemp(prefix="pulse-stubs-")
    well_known = Path(protoc.__file__).parent / "_proto"
    files = sorted(str(p) for p in PROTO_DIR.rglob("*.proto"))
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ])
    if status != 0:
        sys.exit(f"protoc failed ({status}) on {files}")
    sys.path.insert(0, out)
    from pulse.v1 import alerts_pb2, alerts_pb2_grpc, common_pb2, ingest_pb2, ingest_pb2_grpc
    from pulse.v1 import query_pb2, query_pb2_grpc
    return {
        "alerts": alerts_pb2, "alerts_grpc": alerts_pb2_grpc, "common": common_pb2,
        "ingest": ingest_pb2, "ingest_grpc": ingest_pb2_grpc,
        "query": query_pb2, "query_grpc": query_pb2_grpc,
    }


def message_of(module_names, stubs, name):
    """A message or enum by name, wherever the proto files define it."""
    for key in module_names:
        if hasattr(stubs[key], name):
            return getattr(stubs[key], name)
    raise AttributeError(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=os.environ.get("PULSE_GRPC_ADDR", "127.0.0.1:50051"))
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the alert")
    parser.add_argument("--api-key", default=os.environ.get("PULSE_API_KEY"),
                        help="sent as authorization: Bearer … (servers with API keys)")
    args = parser.parse_args()

    pb = load_stubs()
    find = lambda name: message_of(["common", "ingest", "query", "alerts"], pb, name)  # noqa: E731
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []

    channel = grpc.insecure_channel(args.target)
    grpc.channel_ready_future(channel).result(timeout=10)
    ingest = pb["ingest_grpc"].IngestServiceStub(channel)
    query = pb["query_grpc"].QueryServiceStub(channel)
    alerts = pb["alerts_grpc"].AlertServiceStub(channel)

    # 1. A rule that fires as soon as any event is counted.
    Metric, Comparison = find("Metric"), find("Comparison")
    rule = alerts.CreateAlertRule(
        find("CreateAlertRuleRequest")(rule=find("AlertRule")(
            name="python example: traffic",
            metric=Metric.Value("METRIC_EVENTS"),
            window_seconds=60,
            comparison=Comparison.Value("COMPARISON_GREATER_THAN"),
            threshold=0,
            for_seconds=0,
            enabled=True,
        )),
        metadata=metadata,
    ).rule
    print(f"created rule {rule.id} ({rule.name})")

    # 2. Watch it in a thread: replay after id 0, then live notifications.
    notifications = queue.Queue()
    watch = alerts.WatchAlerts(
        find("WatchAlertsRequest")(rule_ids=[rule.id], after_id=0), metadata=metadata)

    def pump():
        try:
            for note in watch:
                notifications.put(note)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                notifications.put(err)

    threading.Thread(target=pump, daemon=True).start()

    # 3. One client stream of event batches.
    Event, Request = find("Event"), find("IngestEventsRequest")
    Pageview, Purchase = find("Pageview"), find("Purchase")

    def event(i):
        e = Event(event_id=str(uuid.uuid4()), user_id=f"py-user-{i % 7}")
        e.data.update({"source": "python example", "n": i})
        kind = i % 5
        if kind < 3:
            e.event_type = "pageview"
            e.pageview.CopyFrom(Pageview(page_url=["/", "/pricing", "/docs"][kind]))
        elif kind == 3:
            e.event_type = "purchase"
            e.purchase.CopyFrom(Purchase(product_id="sku-py", quantity=1, amount="9.99"))
        else:
            e.event_type = "click"
        return e

    def batches():
        for first in range(0, args.events, 10):
            req = Request(events=[event(i) for i in range(first, min(first + 10, args.events))])
            req.sent_at.GetCurrentTime()
            yield req

    response = ingest.IngestEvents(batches(), metadata=metadata)
    print(f"IngestEvents: accepted={response.accepted} duplicates={response.duplicates} "
          f"rejected={response.rejected}")
    for error in response.errors:
        print(f"  event {error.index} ({error.event_id}): {error.reason}")
    if response.accepted != args.events:
        sys.exit(f"expected {args.events} accepted events")

    # 4. A metric over the last 5 minutes (end exclusive, minute-aligned).
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    request = find("GetMetricsRequest")(
        metric=Metric.Value("METRIC_EVENTS"),
        granularity=find("Granularity").Value("GRANULARITY_TOTAL"),
        group_by=find("Dimension").Value("DIMENSION_EVENT_TYPE"),
    )
    request.start.FromDatetime(end - timedelta(minutes=5))
    request.end.FromDatetime(end)
    answer = query.GetMetrics(request, metadata=metadata)
    for series in answer.series:
        print(f"GetMetrics: {series.group or 'all'} = {series.total:g}")

    # 5. The FIRING notification.
    State = find("AlertState")
    deadline = time.monotonic() + args.timeout
    fired = None
    while fired is None and time.monotonic() < deadline:
        try:
            note = notifications.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if isinstance(note, Exception):
            sys.exit(f"WatchAlerts failed: {note}")
        print(f"notification {note.id}: {State.Name(note.state).removeprefix('ALERT_STATE_')} "
              f"{note.rule_name} value={note.value:g} threshold={note.threshold:g}")
        if note.state == State.Value("ALERT_STATE_FIRING"):
            fired = note
    watch.cancel()
    alerts.DeleteAlertRule(find("DeleteAlertRuleRequest")(id=rule.id), metadata=metadata)
    print(f"deleted rule {rule.id}")
    if fired is None:
        sys.exit(f"no FIRING notification within {args.timeout} s")


if __name__ == "__main__":
    main()

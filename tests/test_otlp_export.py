"""otel/trace_demo.py's OTLP export, end to end: what Jaeger and Prometheus would get.

The demo runs as a user runs it (``OTEL_EXPORTER_OTLP_ENDPOINT`` set, the ``[otlp]``
exporters installed), against a local HTTP endpoint that decodes the OTLP requests as
the collector of ``otel/docker-compose.yml`` would. No Docker here: the collector,
Jaeger and Prometheus only pass on what arrives, so this checks what they would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the [otlp] exporters (opentelemetry-exporter-otlp-proto-http) are not installed",
)
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402

from atlas_actors.telemetry.export import instrument_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class _Collector(ThreadingHTTPServer):
    """Decodes OTLP/HTTP protobuf requests into the spans and metric names received."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.lock = threading.Lock()
        self.spans: list[trace_pb2.Span] = []
        self.services: set[str] = set()
        self.metrics: set[str] = set()
        self.bad: list[str] = []


class _Receive(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        collector = self.server
        with collector.lock:
            if self.path == "/v1/traces":
                request = trace_service.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    collector.services.update(
                        attribute.value.string_value
                        for attribute in resource_spans.resource.attributes
                        if attribute.key == "service.name"
                    )
                    for scope in resource_spans.scope_spans:
                        collector.spans.extend(scope.spans)
            elif self.path == "/v1/metrics":
                metrics = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                for resource_metrics in metrics.resource_metrics:
                    for scope_metrics in resource_metrics.scope_metrics:
                        collector.metrics.update(m.name for m in scope_metrics.metrics)
            else:
                collector.bad.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reports what matters."""


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_demo_exports_linked_traces_and_the_catalogued_metrics(
    tmp_path: Path, collector: _Collector
) -> None:
    host, port = collector.server_address[:2]
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{host!s}:{port}",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "otel" / "trace_demo.py"), "1.5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "writes" in done.stderr and "traced" in done.stderr
    assert not collector.bad
    assert collector.services == {"atlas-actors-demo"}

    spans = collector.spans
    by_id = {span.span_id: span for span in spans}
    names = {span.name for span in spans}
    assert {"atlas.writer.commit", "atlas.query"} <= names, sorted(names)
    # Each write the writer handled is a CONSUMER span whose parent is the caller's
    # CLIENT span, in the same trace: what Jaeger draws as one request.
    consumers = [
        span
        for span in spans
        if span.kind == trace_pb2.Span.SPAN_KIND_CONSUMER and span.name.startswith("atlas.writer.")
    ]
    assert consumers
    parented = [span for span in consumers if span.parent_span_id in by_id]
    assert len(parented) >= len(consumers) * 0.9  # (a span may end after the last export)
    for span in parented:
        parent = by_id[span.parent_span_id]
        assert parent.trace_id == span.trace_id
        assert parent.kind == trace_pb2.Span.SPAN_KIND_CLIENT, (span.name, parent.name)
    # A group commit links the writes it committed.
    commits = [span for span in spans if span.name == "atlas.writer.commit"]
    linked = {link.span_id for span in commits for link in span.links}
    assert linked
    missing = linked - set(by_id)  # (the demo's batch exporter may drop spans under load)
    assert len(missing) <= len(linked) * 0.1, (len(missing), len(linked))
    assert all(
        by_id[span_id].kind == trace_pb2.Span.SPAN_KIND_CONSUMER for span_id in linked - missing
    )
    # Every span says what Jaeger filters on: the database system and file; a query's
    # its text and operation.
    for span in spans:
        attributes = {a.key: a.value.string_value for a in span.attributes}
        assert attributes.get("db.system.name") == "sqlite", span.name
        assert attributes.get("db.namespace") == str(tmp_path / "atlas-traced.db"), span.name
        if span.name == "atlas.query":
            assert attributes.get("db.operation.name") == "SELECT"
            assert attributes.get("db.query.text", "").startswith("SELECT")

    expected = {
        instrument_name(name)
        for name in ("writer.writes", "writer.batches", "pool.total", "restarts", "wal.frames")
    }
    assert expected <= collector.metrics, sorted(collector.metrics)

"""Send the demo workload's traces and metrics to the collector (or print them without one).

    pip install -e '.[otlp]'
    docker compose -f otel/docker-compose.yml up -d
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python otel/trace_demo.py [SECONDS]
    # traces: http://localhost:16686, service "atlas-actors-demo"
    # metrics: http://localhost:3000 (Grafana, dashboard "atlas-actors"),
    #          alerts: http://localhost:9090/alerts

Without the [otlp] extra, spans are printed to stdout and metrics are not exported.
"""

from __future__ import annotations

import sys
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas_actors as atlas
from atlas_actors.workload import run_workload


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    resource = Resource.create({"service.name": "atlas-actors-demo"})
    provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        print("opentelemetry-exporter-otlp not installed: printing spans", file=sys.stderr)
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        # Endpoint and headers come from the standard OTEL_EXPORTER_OTLP_* variables.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers.append(
            PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=5000)
        )
    meters = MeterProvider(resource=resource, metric_readers=readers)
    with atlas.open("atlas-traced.db", tracer_provider=provider, meter_provider=meters) as db:
        report = run_workload(db, threads=4, seconds=seconds, kill_every=1.0)
        meters.force_flush()  # the last values, before the storage closes
    provider.shutdown()
    meters.shutdown()
    print(f"{report.writes.count} writes, {report.reads.count} reads traced", file=sys.stderr)


if __name__ == "__main__":
    main()

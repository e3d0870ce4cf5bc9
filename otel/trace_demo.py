"""Send the demo workload's traces to Jaeger (or print them when no collector is set up).

    pip install -e '.[otlp]'
    docker compose -f otel/docker-compose.yml up -d
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python otel/trace_demo.py
    # then open http://localhost:16686, service "atlas-actors-demo"

Without the [otlp] extra, spans are printed to stdout instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
    provider = TracerProvider(resource=Resource.create({"service.name": "atlas-actors-demo"}))
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        print("opentelemetry-exporter-otlp not installed: printing spans", file=sys.stderr)
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        # Endpoint and headers come from the standard OTEL_EXPORTER_OTLP_* variables.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    with atlas.open("atlas-traced.db", tracer_provider=provider) as db:
        report = run_workload(db, threads=4, seconds=2.0, kill_every=1.0)
    provider.shutdown()
    print(f"{report.writes.count} writes, {report.reads.count} reads traced", file=sys.stderr)


if __name__ == "__main__":
    main()

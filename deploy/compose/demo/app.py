"""A small demo shop that sends traces, metrics and logs with the OpenTelemetry Python SDK.

Everything about where it sends is read from the standard environment variables, exactly as an
app pointed at the gateway would be (docs/clients.md):

  OTEL_EXPORTER_OTLP_ENDPOINT     https://otlp.localhost (through Traefik) or http://gateway:4317
  OTEL_EXPORTER_OTLP_PROTOCOL     grpc (default here) or http/protobuf
  OTEL_EXPORTER_OTLP_HEADERS      authorization=Bearer%20<the tenant's key>
  OTEL_EXPORTER_OTLP_CERTIFICATE  the CA that signed the gateway's (or the proxy's) certificate
  OTEL_SERVICE_NAME               the service.name resource attribute

  python app.py [--orders N] [--interval SECONDS]     (default: forever, one order a second)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import time
from types import FrameType

from opentelemetry import metrics, trace
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def exporters(protocol: str) -> tuple[object, object, object]:
    """Span, metric and log exporters for the OTLP protocol, configured by the environment."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
            OTLPLogExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    else:
        raise SystemExit(f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf: {protocol}")
    return OTLPSpanExporter(), OTLPMetricExporter(), OTLPLogExporter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=0, help="stop after N orders (0: never)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between orders")
    args = parser.parse_args()

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    span_exporter, metric_exporter, log_exporter = exporters(protocol)
    resource = Resource.create({"service.version": "1.0.0"})  # + OTEL_SERVICE_NAME etc.

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))  # type: ignore[arg-type]
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=5000)  # type: ignore[arg-type]
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))  # type: ignore[arg-type]
    log = logging.getLogger("demo.shop")
    log.setLevel(logging.INFO)
    log.addHandler(LoggingHandler(logger_provider=logger_provider))

    tracer = trace.get_tracer("demo.shop")
    meter = metrics.get_meter("demo.shop")
    orders = meter.create_counter("shop.orders", unit="{order}", description="orders placed")
    duration = meter.create_histogram("shop.checkout.duration", unit="s")

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"demo shop sending over {protocol} to {os.environ.get('OTEL_EXPORTER_OTLP_ENDPOINT')}")
    n = 0
    while not stopping and (args.orders == 0 or n < args.orders):
        n += 1
        started = time.monotonic()
        item = random.choice(["tea", "coffee", "cake"])
        with tracer.start_as_current_span("POST /checkout", kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("shop.order.id", n)
            span.set_attribute("shop.item", item)
            with tracer.start_as_current_span("SELECT stock", kind=trace.SpanKind.CLIENT):
                time.sleep(random.uniform(0.001, 0.01))
            log.info("order %d placed: one %s", n, item)
        orders.add(1, {"shop.item": item})
        duration.record(time.monotonic() - started, {"shop.item": item})
        if args.orders == 0 or n < args.orders:
            time.sleep(args.interval)

    # flush everything still buffered before exiting
    tracer_provider.shutdown()
    meter_provider.shutdown()
    logger_provider.shutdown()
    print(f"demo shop placed {n} orders")


if __name__ == "__main__":
    main()

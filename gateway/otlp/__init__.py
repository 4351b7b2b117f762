"""The data format: OTLP signals, the wire walk, OTLP/JSON, splitting, validation and the
work too big for the event loop. Imports nothing else of the gateway."""

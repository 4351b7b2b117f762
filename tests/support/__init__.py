"""Helpers the tests share: real peers (gateway, sink, rotel, collector), OTLP encodings,
raw gRPC over HTTP/2, tenant configs, a browser, fault-test loads. Tests import these, never
each other."""

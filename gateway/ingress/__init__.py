"""Ingress: every OTLP transport, byte caps and bounded decompression, and the intake seam
that checks the key before it reads the body."""

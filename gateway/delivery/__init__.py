"""Delivery: a queue, workers, merging and retry per destination, and the exporters."""

"""The gateway's own telemetry: every metric defined once, logs, the recent-errors ring."""

"""The admin listener (metrics, probes, admin API, status page) and the terminal console."""

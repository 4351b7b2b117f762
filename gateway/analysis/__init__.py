"""Analysis of accepted spans after the acknowledgement: RED metrics and the live tail."""

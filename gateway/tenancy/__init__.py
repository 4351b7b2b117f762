"""Tenancy: API key -> tenant, allowed signals, routes, quotas, drop rules, enrichment."""

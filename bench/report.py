"""Summarising the runs (medians per cell, the ratio to rotel, durable against memory), the
markdown table (one per request size), and what the report says about the machine and the
versions measured."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from importlib.metadata import version

from bench.contenders import rotel_agent
from bench.procs import ROOT
from bench.records import (
    CONTENDERS,
    TRANSPORTS,
    VARIANTS,
    CellKey,
    DurableVsMemory,
    Machine,
    RequestInfo,
    Run,
    SummaryRow,
)


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs: Sequence[Run]) -> list[SummaryRow]:
    """One row per cell: medians over its runs (sums for span counts), the ratio of its
    spans/CPU-s to rotel's at the same request size (rotel runs `single` only: fan-out and
    durable compare with that), and for `durable` the ratio to the same contender's `single`
    (memory queue). Ordered by request size, transport, variant, contender."""
    cells: dict[CellKey, list[Run]] = {}
    for r in runs:
        cells.setdefault(r.key, []).append(r)
    per_cpu = {k: median([r.spans_per_cpu_s for r in rs]) for k, rs in cells.items()}
    per_s = {k: median([r.spans_per_s for r in rs]) for k, rs in cells.items()}
    rows = [_row(key, rs, per_cpu, per_s) for key, rs in cells.items()]
    order = {name: i for i, name in enumerate((*CONTENDERS, *TRANSPORTS, *VARIANTS))}
    rows.sort(key=lambda o: (o.spans, order[o.transport], order[o.variant], order[o.contender]))
    return rows


def _row(
    key: CellKey,
    rs: list[Run],
    per_cpu: dict[CellKey, float | None],
    per_s: dict[CellKey, float | None],
) -> SummaryRow:
    reference = key.variant
    ref = CellKey("rotel", key.transport, key.variant, key.spans)
    if ref not in per_cpu:  # rotel runs `single` only; compare fan-out and durable with that
        ref, reference = CellKey("rotel", key.transport, "single", key.spans), "single"
    mine, theirs = per_cpu[key], per_cpu.get(ref)
    ratio = round(mine / theirs, 2) if mine and theirs else None
    durable_vs_memory = None
    memory = CellKey(key.contender, key.transport, "single", key.spans)
    mem_cpu, mem_s = per_cpu.get(memory), per_s.get(memory)
    if key.variant == "durable" and mem_cpu and mine:
        mine_s = per_s[key]
        durable_vs_memory = DurableVsMemory(
            spans_per_cpu_s=round(mine / mem_cpu, 2),
            spans_per_s=round(mine_s / mem_s, 2) if mem_s and mine_s else None,
        )
    half = [r.half_load for r in rs]
    return SummaryRow(
        contender=key.contender,
        transport=key.transport,
        variant=key.variant,
        spans=key.spans,
        runs=len(rs),
        spans_per_cpu_s=mine,
        spans_per_cpu_s_all=tuple(r.spans_per_cpu_s for r in rs),
        spans_per_s=per_s[key],
        cpu_busy=median([r.cpu_busy for r in rs]),
        p50_ms=median([r.p50_ms for r in rs]),
        p99_ms=median([r.p99_ms for r in rs]),
        half_load_rps=median([h.achieved_rps if h else None for h in half]),
        half_load_p50_ms=median([h.p50_ms if h else None for h in half]),
        half_load_p99_ms=median([h.p99_ms if h else None for h in half]),
        half_load_client_late_p99_ms=median([h.client_late_p99_ms if h else None for h in half]),
        idle_rss_mib=median([r.idle_rss_mib for r in rs]),
        peak_rss_mib=median([r.peak_rss_mib for r in rs]),
        gzip_ratio=median([r.gzip_ratio for r in rs]),
        load_core_busy=median([r.load_core_busy for r in rs]),
        other_on_core0_max=max(r.other_on_core0 for r in rs),
        other_on_core1_max=max(r.other_on_core1 for r in rs),
        interfered_runs=sum(r.interfered() for r in rs),
        sent_spans=sum(r.sent_spans for r in rs),
        acked_spans=sum(r.acked_spans for r in rs),
        delivered_spans=sum(r.delivered_spans for r in rs),
        failed_requests=sum(r.failed_requests for r in rs),
        untagged_spans=sum(r.untagged_spans for r in rs),
        rotel_reference=reference,
        ratio_to_rotel=ratio,
        durable_vs_memory=durable_vs_memory,
    )


# The half-load cell says "client late" when the paced client started its requests later than
# this (p99): beyond the ~1 ms of its timer, its core (shared with the sink) was busy, and that
# delay is part of the latencies measured
CLIENT_LATE_MS = 2.0


def fmt(v: object, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown_table(summary: Sequence[SummaryRow], sizes: Sequence[RequestInfo] = ()) -> str:
    """The summary as markdown: one table when every row has the same request size (as before
    --spans), else a table per size under a heading `### N spans per request` (with the
    request's bytes when `sizes` has it), smallest first."""
    spans = sorted({o.spans for o in summary})
    if len(spans) <= 1:
        return _table(summary)
    size_bytes = {r.spans: r.bytes for r in sizes}
    parts = []
    for n in spans:
        title = f"### {n:,} span{'s' if n != 1 else ''} per request"
        if n in size_bytes:
            title += f" ({size_bytes[n]:,} bytes)"
        parts.append(title + "\n\n" + _table([o for o in summary if o.spans == n]))
    return "\n".join(parts)


def _table(summary: Sequence[SummaryRow]) -> str:
    head = (
        "| contender | transport | variant | spans/CPU-s | ratio to rotel | spans/s | "
        "CPU busy | p50 / p99 ms (full load) | p50 / p99 ms (half load) | idle / peak RSS MiB | "
        "delivered / acked / sent spans | delivered without tenant.id |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for o in summary:
        ratio = fmt(o.ratio_to_rotel, 2)
        if o.ratio_to_rotel is not None and o.rotel_reference != o.variant:
            ratio += f" (vs {o.rotel_reference})"
        half = "-"
        if o.half_load_p50_ms is not None:
            half = (
                f"{fmt(o.half_load_p50_ms, 2)} / {fmt(o.half_load_p99_ms, 2)} "
                f"@ {fmt(o.half_load_rps, 0)} req/s"
            )
            late = o.half_load_client_late_p99_ms
            if late is not None and late > CLIENT_LATE_MS:
                half += f" (client late, p99 {fmt(late, 1)} ms)"
        cpu_busy = None if o.cpu_busy is None else 100 * o.cpu_busy
        rows.append(
            f"| {o.contender} | {o.transport} | {o.variant} | "
            f"{fmt(round(o.spans_per_cpu_s) if o.spans_per_cpu_s else None)} | {ratio} | "
            f"{fmt(round(o.spans_per_s) if o.spans_per_s else None)} | "
            f"{fmt(cpu_busy, 0)}% | "
            f"{fmt(o.p50_ms, 1)} / {fmt(o.p99_ms, 1)} | {half} | "
            f"{fmt(o.idle_rss_mib)} / {fmt(o.peak_rss_mib)} | "
            f"{fmt(o.delivered_spans)} / {fmt(o.acked_spans)} / {fmt(o.sent_spans)} | "
            f"{fmt(o.untagged_spans)} |"
        )
    return head + "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------
# Versions and machine


def _first_line(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not found"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else ""


def versions(gateway_rev: str | None) -> dict[str, str]:
    """What was measured: the gateway (a git revision, or the work tree), rotel, the servers and
    the load generators."""
    if gateway_rev:
        source = f"git {gateway_rev[:10]}, as committed"
    else:
        git = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"])
        dirty = _first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"])
        source = f"git {git}" + (" + uncommitted changes in gateway/" if dirty else "")
    return {
        "otlp-gateway": f"{version('otlp-gateway')} ({source})",
        "rotel": _first_line([rotel_agent(), "--version"]) + f" (PyPI rotel {version('rotel')})",
        "python": platform.python_version(),
        "hypercorn": version("hypercorn"),
        "uvicorn": version("uvicorn"),
        "zttp": version("zttp"),
        "wrk": _first_line(["wrk", "-v"]),
        "h2load": _first_line(["h2load", "--version"]),
        "kernel": platform.release(),
    }


def machine() -> Machine:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return Machine(
        cpus=os.cpu_count(),
        cpu_model=model,
        memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        loadavg_at_start=os.getloadavg(),
        loadavg_at_end=None,
    )

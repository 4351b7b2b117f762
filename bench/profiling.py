"""Profiling: py-spy on the gateway during a cell's measured window (bench/run.py --profile).

`py-spy record --format raw --rate 250` with blocking sampling (py-spy pauses the process for
each sample: whole, consistent stacks; --nonblocking would perturb less but returns partial
coroutine stacks). The collapsed stacks are summarised by function (self and inclusive) and by
part of the hot path (the innermost frame's module, PROFILE_COMPONENTS).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.contenders import Contender
from bench.procs import LOAD_CORE, Procs, pinned
from bench.records import ProfileSummary, Ranking, Run


@dataclass(frozen=True)
class Profiler:
    proc: subprocess.Popen[bytes]
    out: Path  # the collapsed stacks


def py_spy_command() -> list[str]:
    """py-spy from PATH or this environment, else through uvx (`uv add --dev py-spy` puts it in
    the environment)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found:
        return [found]
    if shutil.which("uvx"):
        return ["uvx", "py-spy"]
    raise SystemExit("bench/run.py --profile: py-spy not found; uv add --dev py-spy")


def start_profile(
    procs: Procs, c: Contender, profile_dir: Path | None, seconds: float, native: bool, tag: str
) -> Profiler | None:
    """py-spy on `c` for up to `seconds` (+5), into `profile_dir`/`tag`.txt; None when not
    profiling (`profile_dir` None) or `c` is rotel."""
    if profile_dir is None or c.name == "rotel":
        return None
    profile_dir.mkdir(parents=True, exist_ok=True)
    out = profile_dir / f"{tag}.txt"
    args = [*py_spy_command(), "record", "--pid", str(c.pid), "--format", "raw", "-o", str(out)]
    args += ["--rate", "250", "--duration", str(round(seconds + 5))]
    args += ["--native"] if native else []
    proc = procs.start(
        pinned(LOAD_CORE, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    return Profiler(proc, out)


def stop_profile(procs: Procs, prof: Profiler | None) -> ProfileSummary | None:
    if prof is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(prof.proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        prof.proc.wait(30)
    except subprocess.TimeoutExpired:
        procs.stop(prof.proc)
    procs.stop(prof.proc)
    return summarise_profile(prof.out)


# The innermost frame's module -> the part of the hot path a sample belongs to (first match)
PROFILE_COMPONENTS = (
    ("gzip (gateway/otlp/gz.py, zlib, ISA-L)", ("gateway/otlp/gz.py", "zlib", "isal", "/gzip.py")),
    ("wire walk: validation + counts (gateway/otlp/wire.py)", ("gateway/otlp/wire.py",)),
    ("enrichment (gateway/tenancy/enrich.py)", ("gateway/tenancy/enrich.py",)),
    ("durable spool (gateway/delivery/spool/)", ("gateway/delivery/spool/",)),
    ("ingress: intake, limits, guards (gateway/ingress/)", ("gateway/ingress/",)),
    ("API keys, tenants (gateway/tenancy/)", ("gateway/tenancy/",)),
    ("delivery: queues, batches, exporters (gateway/delivery/)", ("gateway/delivery/",)),
    (
        "telemetry, analysis (gateway/telemetry/, analysis/)",
        ("gateway/telemetry/", "gateway/analysis/"),
    ),
    ("rest of the gateway (gateway/)", ("gateway/",)),
    ("pyqwest (export client)", ("pyqwest",)),
    ("connect-python (gRPC server)", ("connectrpc/",)),
    ("HTTP/2 framing (h2, hyperframe, hpack)", ("h2/", "hyperframe/", "hpack/")),
    ("hypercorn", ("hypercorn/",)),
    ("uvicorn + zttp", ("uvicorn/", "zttp")),
    ("h11 (HTTP/1.1: hypercorn and the export client)", ("h11/",)),
    ("httpx + httpcore (export client)", ("httpx/", "httpcore/", "anyio/", "cookiejar")),
    ("starlette", ("starlette/",)),
    ("asyncio event loop, sockets", ("asyncio/", "selectors.py")),
)


def summarise_profile(path: Path, top: int = 15) -> ProfileSummary:
    """Collapsed stacks -> % of all samples: by function, self (the innermost frame; time in C code
    is the Python function that called it) and inclusive (anywhere on the stack); and by part of
    the hot path (the innermost frame's module, PROFILE_COMPONENTS)."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    components: dict[str, int] = {}
    total = 0
    if not path.exists():
        return ProfileSummary(str(path), 0, self_=None, inclusive=None, components=None)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        raw = [f for f in stack.split(";") if f]
        frames = [_frame_name(f) for f in raw]
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for name in set(frames):
            incl_counts[name] = incl_counts.get(name, 0) + count
        part = next(
            (label for label, keys in PROFILE_COMPONENTS if any(k in raw[-1] for k in keys)),
            "other",
        )
        components[part] = components.get(part, 0) + count

    def ranked(counts: dict[str, int], n: int = top) -> Ranking:
        items = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        return tuple((name, round(100 * v / total, 1)) for name, v in items)

    return ProfileSummary(
        str(path),
        total,
        self_=ranked(self_counts),
        inclusive=ranked(incl_counts, 40),
        components=ranked(components, len(components)),
    )


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)" -> "function (file.py)"
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


def print_profile(r: Run) -> None:
    p = r.profile
    if p is None:
        return
    print(f"\nprofile {r.key} (repeat {r.repeat}): {p.samples} samples, {p.file}")
    for title, ranking in (
        ("part of the hot path", p.components),
        ("function (self)", p.self_),
    ):
        print(f"  top by {title}:")
        for name, pct in (ranking or ())[:12]:
            print(f"    {pct:5.1f}%  {name}")

"""The import-layer rule: data flows one way (ingress -> tenancy -> delivery), and a module imports
only its own layer's package and the layers below it. Only the wiring on top (reload, app, cli)
knows every layer. Read from the source, imports inside functions included, so the rule cannot
erode."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

# Bottom to top. Packages on one rank are peers and do not import each other, except on rank 0,
# the foundation every layer shares.
LAYERS: list[tuple[str, ...]] = [
    # the data format, config value objects, errors with their OTLP status, own telemetry
    (
        "gateway",
        "gateway._gen",
        "gateway.otlp",
        "gateway.config",
        "gateway.errors",
        "gateway.telemetry",
    ),
    # queues, retry, exporters; RED and the live tail; what replicas share through Redis
    ("gateway.delivery", "gateway.analysis", "gateway.cluster"),
    ("gateway.tenancy",),  # API key -> tenant, quotas, drop rules, enrichment
    ("gateway.ingress",),  # every transport, limits, the intake seam
    ("gateway.admin",),  # the admin listener and the console: reads what the layers expose
    ("gateway.server",),  # listeners, server implementations, workers: takes the app as a value
    # the wiring: only these know every layer
    # builds new tenancy and routes from a changed config; drains a removed replica's queues
    ("gateway.reload", "gateway.drain"),
    ("gateway.app",),  # builds every layer and the ASGI app (create_app)
    ("gateway.cli",),  # the command: makes the app and hands it to the server
    ("gateway.__main__",),
]
FOUNDATION = 0


def layer_of(module: str) -> tuple[int, str]:
    """(rank, unit) of a module: the longest entry of LAYERS that is the module or contains it."""
    best: tuple[int, str] | None = None
    for rank, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (
                best is None or len(unit) > len(best[1])
            ):
                best = (rank, unit)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(GATEWAY.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gateway_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every gateway module `path` imports, anywhere in the file."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("gateway")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "gateway" or target.startswith("gateway."):
                # `from gateway.x import y`: y may be a module; its layer is x's or deeper in it
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return found


def sources() -> list[Path]:
    return sorted(p for p in GATEWAY.rglob("*.py") if "_gen" not in p.parts)


def test_every_module_is_in_a_layer() -> None:
    for path in sources():
        layer_of(module_name(path))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(GATEWAY.parent)))
def test_imports_go_down_only(path: Path) -> None:
    rank, unit = layer_of(module_name(path))
    wrong = []
    for line, target in gateway_imports(path):
        their_rank, their_unit = layer_of(target)
        same_unit = their_unit == unit
        if their_rank < rank or same_unit or (rank == their_rank == FOUNDATION):
            continue
        wrong.append(f"{path.name}:{line} imports {target} ({their_unit}, rank {their_rank})")
    assert not wrong, f"{unit} (rank {rank}) may import only lower layers:\n" + "\n".join(wrong)


def test_the_decode_process_needs_only_the_data_format() -> None:
    """decodeworker runs as its own process: it must start without the gateway's other layers."""
    path = GATEWAY / "otlp" / "decodeworker.py"
    assert all(t.startswith("gateway.otlp.") for _, t in gateway_imports(path))


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    """The check itself: an upward import is found."""
    assert layer_of("gateway.delivery.pipeline")[0] < layer_of("gateway.ingress.intake")[0]
    assert layer_of("gateway.ingress.limits") == (3, "gateway.ingress")
    assert layer_of("gateway.config.Limits") == (0, "gateway.config")

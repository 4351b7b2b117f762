"""The deploy files (Dockerfile, deploy/compose, deploy/nomad, deploy/kubernetes) against the
gateway itself: every file parses, every embedded gateway config loads with the gateway's own
loader given exactly the environment the deploy file provides, and ports, paths, probes, volumes
and commands agree with that config, the CLI and the README. What can run here runs: the image's
install command in a scratch directory and its entry point, each deploy config served by a real
gateway with its probes answered, and the compose demo app sending through TLS.

No container engine runs here, so no image is built and no file is applied to a cluster."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import hcl2
import httpx
import pytest
import yaml
from hcl2.utils import SerializationOptions

from gateway import config as config_mod
from gateway.otlp.signals import SIGNALS
from gateway.tenancy import keys
from tests.support import cli
from tests.support.cli import serve
from tests.support.peers import ROOT, Sink, free_port, wait_until

DEPLOY = ROOT / "deploy"
IMAGE_CONFIG = "/etc/otlp-gateway/gateway.yaml"  # where the image looks for its config
DATA_DIR = "/var/lib/otlp-gateway"  # the image's writable directory (queues)
OTLP_PORTS = {4317, 4318}
ADMIN_PORT = 9464
HAPROXY_CFG = DEPLOY / "haproxy/haproxy.cfg"
HAPROXY_STATS = 8404  # haproxy.cfg's default STATS_BIND
HAPROXY_SLOTS = 6  # GATEWAY_1 .. GATEWAY_6


# ---------------------------------------------------------------------------------------------
# Helpers


def load_config(text: str, env: dict[str, str], source: str) -> config_mod.GatewayConfig:
    """The gateway's loader on `text` with exactly `env` as the environment."""
    return config_mod.parse(text, source, env)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def admin_listen(text: str) -> str:
    """The admin listener's address as the config file gives it."""
    return str(yaml.safe_load(text)["admin"]["listen"])


def check_container_config(cfg: config_mod.GatewayConfig, text: str) -> None:
    """What every config that runs in a container must have: listeners on every interface on the
    OTLP ports, the admin listener reachable from probes, a durable queue on the data volume."""
    assert set(cfg.listen) == {f"0.0.0.0:{p}" for p in OTLP_PORTS}
    assert admin_listen(text) == f"0.0.0.0:{ADMIN_PORT}"
    assert cfg.admin.listen == f"0.0.0.0:{ADMIN_PORT}"
    for name in cfg.service_backends:
        b = cfg.backends[name]
        assert b.protocol != "file", "a container's files are lost with it"
        assert b.queue.durable and PurePosixPath(b.queue.directory).is_relative_to(DATA_DIR)


def compose_subst(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}", sub, value)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        instr, _, args = full.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr, args in dockerfile():
        if instr == "FROM":
            result.append([])
        if result:
            result[-1].append((instr, args))
    return result


def args_of(stage: list[tuple[str, str]], instr: str) -> list[str]:
    return [a for i, a in stage if i == instr]


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array is YAML
    assert isinstance(value, list), f"use the exec form: {args}"
    return [str(v) for v in value]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(stage, "ENV"):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def hcl(path: Path) -> dict[str, Any]:
    options = SerializationOptions(
        with_comments=False,
        explicit_blocks=False,
        preserve_heredocs=False,
        strip_string_quotes=True,
    )
    with open(path) as f:
        return dict(hcl2.load(f, serialization_options=options))


def hcl_text(value: str) -> str:
    """An HCL string's value: escaped quotes and backslashes, and the template escapes $${ and
    %%{, which stand for a literal ${ and %{."""
    out = re.sub(r'\\(["\\])', r"\1", value)
    return out.replace("$${", "${").replace("%%{", "%{")


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_nomad_template(
    text: str, variables: dict[str, dict[str, str]], services: dict[str, list[dict[str, Any]]]
) -> str:
    """The subset of Nomad's template language the job uses: `with nomadVar "PATH"`,
    `with nomadService "NAME"`, `with index . N`, `.Field` and `end`; whitespace trimming with
    `{{-` and `-}}`; and `range $i, $s := nomadService "NAME"` with `add $i 1` and `$s.Field`
    inside (not nested). Anything else fails, so the job cannot grow syntax this does not
    check."""
    text = _expand_ranges(text, services)
    out: list[str] = []
    stack: list[Any] = [None]  # the value of `.`; a false `with` pushes `skip`
    skip = object()
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(text):
        literal = text[pos : m.start()]
        if trim_next:
            literal = literal.lstrip()
        if m.group(1):
            literal = literal.rstrip()
        if skip not in stack:
            out.append(literal)
        pos, trim_next = m.end(), bool(m.group(3))
        action = m.group(2)
        dot = stack[-1]
        if action == "end":
            assert len(stack) > 1, "unbalanced end"
            stack.pop()
            continue
        with_var = re.fullmatch(r'with nomadVar "([^"]+)"', action)
        with_service = re.fullmatch(r'with nomadService "([^"]+)"', action)
        with_index = re.fullmatch(r"with index \. (\d+)", action)
        field = re.fullmatch(r"\.([A-Za-z_][A-Za-z0-9_]*)", action)
        if skip in stack:
            if action.startswith("with "):
                stack.append(skip)
            continue
        if with_var:
            value = variables.get(with_var.group(1))
            stack.append(value if value else skip)
        elif with_service:
            service = services.get(with_service.group(1))
            stack.append(service if service else skip)
        elif with_index:
            stack.append(dot[int(with_index.group(1))])
        elif field:
            name = field.group(1)
            assert isinstance(dot, dict) and name in dot, f"template uses {{{{ .{name} }}}}"
            out.append(str(dot[name]))
        else:
            raise AssertionError(f"template action not covered by this test: {{{{ {action} }}}}")
    assert len(stack) == 1, "unbalanced with/end"
    rest = text[pos:]
    out.append(rest.lstrip() if trim_next else rest)
    return "".join(out)


_RANGE = re.compile(
    r'\{\{(-?)\s*range \$i, \$s := nomadService "([^"]+)"\s*(-?)\}\}(.*?)\{\{(-?)\s*end\s*(-?)\}\}',
    re.S,
)


def _expand_ranges(text: str, services: dict[str, list[dict[str, Any]]]) -> str:
    """Every `range` block repeated for each instance of its service, with its trimming."""
    while (m := _RANGE.search(text)) is not None:
        trim_before, name, trim_in, body, trim_end, trim_after = m.groups()
        body = body.lstrip() if trim_in else body
        body = body.rstrip() if trim_end else body
        rendered = []
        for i, service in enumerate(services.get(name, [])):

            def sub(a: re.Match[str], i: int = i, service: dict[str, Any] = service) -> str:
                action = a.group(2)
                if action == "add $i 1":
                    return str(i + 1)
                field = re.fullmatch(r"\$s\.([A-Za-z_][A-Za-z0-9_]*)", action)
                assert field and field.group(1) in service, f"range uses {{{{ {action} }}}}"
                return str(service[field.group(1)])

            rendered.append(_ACTION.sub(sub, body))
        before, after = text[: m.start()], text[m.end() :]
        before = before.rstrip() if trim_before else before
        after = after.lstrip() if trim_after else after
        text = before + "".join(rendered) + after
    return text


def local_copy(config_text: str, sink: Sink, tmp: Path) -> dict[str, Any]:
    """A deploy config made runnable here: backends to the sink, queues under tmp, admin on a
    free loopback port; tenants, keys, limits and everything else as they are."""
    data: dict[str, Any] = yaml.safe_load(config_text)
    for backend in data.get("backends", {}).values():
        backend["endpoint"] = sink.endpoint
        backend["protocol"] = "http/protobuf"
    if "queue" in data:
        data["queue"]["directory"] = str(tmp / "queue")
    data["admin"] = {**data.get("admin", {}), "listen": f"127.0.0.1:{free_port()}"}
    # no Redis here: each replica on its own (tests/test_cluster_*.py run the cluster section)
    data.pop("cluster", None)
    return data


def haproxy_check(env: dict[str, str]) -> str:
    """`haproxy -c` on deploy/haproxy/haproxy.cfg with exactly `env`: its output (a name that
    does not resolve here is a warning: the server starts down)."""
    binary = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if binary is None:
        pytest.skip("haproxy is not installed")
    done = subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def haproxy_env_check(env: dict[str, str], listen: tuple[str, ...]) -> None:
    """The replicas HAProxy is given: consecutive slots from GATEWAY_1, each the OTLP port the
    gateway config listens on; admin checks on the config's admin port (the file's default)."""
    slots = sorted(k for k in env if re.fullmatch(r"GATEWAY_\d+", k))
    assert slots == [f"GATEWAY_{i}" for i in range(1, len(slots) + 1)]
    assert 1 <= len(slots) <= HAPROXY_SLOTS
    ports = {port_of(a) for a in listen}
    for slot in slots:
        assert port_of(env[slot]) in ports, env[slot]
        assert f"{slot}_ADMIN_PORT" not in env  # the default, 9464
    assert '"${GATEWAY_1_ADMIN_PORT-9464}"' in HAPROXY_CFG.read_text()


def probe(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def serve_and_probe(
    tmp: Path, config_text: str, env: dict[str, str], key: str | None, probes: list[str]
) -> None:
    """Serve the deploy config (made local), answer its probes on the admin listener, and take an
    export with `key` that reaches the backend."""
    with Sink().running() as sink:
        data = local_copy(config_text, sink, tmp)
        with serve(tmp, data, [], env=env, tls=False) as gw:
            admin = data["admin"]["listen"]
            for path in probes:
                url = f"http://{admin}{path}"
                assert wait_until(lambda u=url: probe(u) == 200), f"{path}: {probe(url)}"
            headers = {"content-type": "application/x-protobuf"}
            if key:
                headers["authorization"] = f"Bearer {key}"
            body = _one_span_request("deploy-probe")
            r = httpx.post(f"{gw.http_endpoint}/v1/traces", content=body, headers=headers)
            assert r.status_code == 200, (r.status_code, r.text)
            assert sink.wait_items("traces", 1) == 1


def _one_span_request(name: str) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, name
    return req.SerializeToString()


def container_uid() -> int:
    runtime = stages()[-1]
    user = args_of(runtime, "USER")[-1]
    uid = user.split(":")[0]
    if uid.startswith("${"):
        name = uid.strip("${}")
        uid = next(a.split("=")[1] for a in args_of(runtime, "ARG") if a.startswith(name + "="))
    return int(uid)


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_installs_from_the_lock_like_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    # The README's two steps: install uv with pip, then `uv run --frozen --no-dev otlp-gateway
    # serve` (which syncs the locked dependencies, the dev group left out, into .venv and runs the
    # `otlp-gateway` script); the image's `uv sync --frozen --no-dev` installs the same.
    assert "python3 -m pip install uv && uv run --frozen --no-dev otlp-gateway serve" in readme
    build, runtime = stages()
    base = stages()[0][0][1]
    assert base.endswith(" AS build")
    assert build[0][1].split()[0] == runtime[0][1].split()[0] == "${PYTHON_IMAGE}"
    python_image = next(a for i, a in dockerfile() if i == "ARG" and a.startswith("PYTHON_IMAGE"))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", python_image)

    runs = args_of(build, "RUN")
    pip_install_uv = r'python3 -m pip install --no-cache-dir "uv==\$\{UV_VERSION\}"'
    assert any(re.match(pip_install_uv, r) for r in runs)
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs, "the environment comes from uv sync"
    for r in syncs:
        assert "uv sync --frozen --no-dev" in r, r  # the lock file, as it is; no dev group
    assert "--no-install-project" in syncs[0] and "--no-editable" in syncs[-1]
    assert env_of(build)["UV_PYTHON_DOWNLOADS"] == "never"  # the base image's Python
    uv_version = next(a for i, a in build if i == "ARG" and a.startswith("UV_VERSION="))
    assert re.fullmatch(r"UV_VERSION=\d+\.\d+\.\d+", uv_version)

    # The runtime stage takes the environment only; it runs as a non-root user.
    assert "--from=build /app/.venv /app/.venv" in args_of(runtime, "COPY")
    assert env_of(runtime)["PATH"].startswith("/app/.venv/bin:")
    assert container_uid() >= 1000

    # Start: the `otlp-gateway serve` that `uv run --frozen --no-dev otlp-gateway serve` runs,
    # with the config at the path the image's default config is copied to.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = exec_form(args_of(runtime, "ENTRYPOINT")[-1])
    cmd = exec_form(args_of(runtime, "CMD")[-1])
    assert entry == ["otlp-gateway"] and entry[0] in scripts
    assert cmd == ["serve", "--config", IMAGE_CONFIG]
    assert f"deploy/container/gateway.yaml {IMAGE_CONFIG}" in args_of(runtime, "COPY")
    assert args_of(runtime, "WORKDIR")[-1] == DATA_DIR

    exposed = {int(p) for a in args_of(runtime, "EXPOSE") for p in a.split()}
    assert exposed == OTLP_PORTS | {ADMIN_PORT}

    health = args_of(runtime, "HEALTHCHECK")[-1]
    assert f"http://127.0.0.1:{ADMIN_PORT}/healthz" in health
    assert "--start-period=" in health


def test_dockerignore_lets_in_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            parts = PurePosixPath(path).parts
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
                result = not negate
        return result

    sources = []
    for stage in stages():
        for args in args_of(stage, "COPY"):
            if args.startswith("--from="):
                continue
            sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is in .dockerignore"
    for local in (".venv", "node_modules", "otlp-data", "otlp-queue", ".git", "tests"):
        assert ignored(local), local


def test_image_install_and_entry_point(tmp_path: Path) -> None:
    """The Dockerfile's build steps, run here: the sources its COPY lines take, its `uv sync`
    commands against the lock file (with this Python instead of the base image's), then the
    entry point and the HEALTHCHECK command against the result."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    build, runtime = stages()
    app = tmp_path / "app"
    app.mkdir()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "UV_PYTHON")
        },
        **env_of(build),
        "UV_PYTHON": sys.executable,
    }
    # In the Dockerfile's order, so each `uv sync` sees only what was copied before it (the
    # dependency layer is built from pyproject.toml and uv.lock alone).
    for instr, args in build:
        if instr == "COPY":
            *sources, _ = args.split()
            for source in sources:
                src = ROOT / source
                if src.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__")
                    shutil.copytree(src, app / source, ignore=ignore)
                else:
                    shutil.copy(src, app / source)
        elif instr == "RUN" and "uv sync" in args:
            command = re.sub(r"--mount=\S+\s*", "", args)
            cli.run(["sh", "-c", command], cwd=app, env=env, timeout=600)

    venv = app / ".venv"
    site = next(venv.glob("lib/python3*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"otlp_gateway", "hypercorn", "protobuf", "pyyaml"} <= installed
    assert not installed & {"pytest", "ruff", "mypy", "python_hcl2", "hypothesis", "rotel"}
    assert (site / "gateway" / "cli.py").is_file()  # installed, not a link to the sources
    assert not list(site.glob("*.pth")) or all(
        str(app) not in p.read_text() for p in site.glob("*.pth")
    )
    size_mib = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
    assert size_mib < 150, f"the environment is {size_mib:.0f} MiB"

    # The entry point with the image's default config (made local: ports, queue directory).
    text = (ROOT / "deploy/container/gateway.yaml").read_text()
    data = yaml.safe_load(text)
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    data["listen"] = [f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"]
    data["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    data["queue"]["directory"] = str(tmp_path / "queue")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    entry = exec_form(args_of(runtime, "ENTRYPOINT")[-1])
    cmd = exec_form(args_of(runtime, "CMD")[-1])
    cmd[cmd.index("--config") + 1] = str(config)
    run_env = {
        **os.environ,
        **env_of(runtime),
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "OTLP_GATEWAY_BACKEND_ENDPOINT": "http://127.0.0.1:9",
        "OTLP_GATEWAY_QUEUE_DURABLE": "true",
    }
    run_env.pop("PYTHONPATH", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*entry, *cmd], cwd=tmp_path, env=run_env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        ok = wait_until(
            lambda: (
                proc.poll() is None and probe_post(f"http://127.0.0.1:{http_port}/v1/traces") == 200
            ),
            timeout=30,
        )
        assert ok, log.read_text()
        health = exec_form(args_of(runtime, "HEALTHCHECK")[-1].split(" CMD ", 1)[1])
        code = health[-1].replace(f"127.0.0.1:{ADMIN_PORT}", f"127.0.0.1:{admin_port}")
        python = str(venv / "bin" / "python")
        assert health[0] == "python"
        check = subprocess.run([python, "-c", code], timeout=30, capture_output=True)
        assert check.returncode == 0, check.stderr
    finally:
        proc.terminate()
        proc.wait(30)


def probe_post(url: str) -> int:
    try:
        return httpx.post(
            url, content=b"", headers={"content-type": "application/x-protobuf"}, timeout=2
        ).status_code
    except httpx.HTTPError:
        return 0


def test_image_default_config(tmp_path: Path) -> None:
    text = (ROOT / "deploy/container/gateway.yaml").read_text()
    env = {"OTLP_GATEWAY_BACKEND_ENDPOINT": "http://lgtm:4318"}
    cfg = load_config(text, env, "image")
    assert set(cfg.listen) == {f"0.0.0.0:{p}" for p in OTLP_PORTS}
    assert admin_listen(text) == f"0.0.0.0:{ADMIN_PORT}"
    (backend,) = cfg.service_backends
    assert cfg.backends[backend].endpoint == "http://lgtm:4318"
    assert cfg.backends[backend].protocol == "http/protobuf"
    assert not cfg.backends[backend].queue.durable
    durable = load_config(text, {**env, "OTLP_GATEWAY_QUEUE_DURABLE": "true"}, "image")
    queue = durable.backends[backend].queue
    assert queue.durable and PurePosixPath(queue.directory).is_relative_to(DATA_DIR)
    # without a backend it says which variable to set
    with pytest.raises(config_mod.ConfigError, match="OTLP_GATEWAY_BACKEND_ENDPOINT is not set"):
        load_config(text, {}, "image")
    # every variable it reads is described in its header
    header = text.split("\nlisten:")[0]
    for name in set(re.findall(r"\$\{([A-Z_]+)", text)):
        assert name in header, name
    serve_and_probe(tmp_path, text, env, None, ["/healthz", "/readyz"])  # open: no key


# ---------------------------------------------------------------------------------------------
# Compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose/compose.yaml").read_text()))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict)
    return {k: compose_subst(str(v), {}) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a compose service's volumes."""
    out = {}
    for v in service.get("volumes", []):
        source, target, *_ = v.split(":")
        out[target] = source
    return out


DEMO_KEY_ENV = "DEMO_API_KEY"
DEMO_APPS = ("demo-grpc", "demo-http")


def compose_demo_key(compose: dict[str, Any]) -> str:
    headers = compose["x-demo-env"]["OTEL_EXPORTER_OTLP_HEADERS"]
    m = re.search(r"\$\{" + DEMO_KEY_ENV + r":-([^}]+)\}", headers)
    assert m, headers
    return m.group(1)


GATEWAYS = ("gateway-1", "gateway-2", "gateway-3")  # the compose replicas


def compose_gateway_config(compose: dict[str, Any], name: str = GATEWAYS[0]) -> Path:
    """The gateway config file compose mounts where the gateway's --config points."""
    gw = compose["services"][name]
    config = PurePosixPath(gw["command"][gw["command"].index("--config") + 1])
    # a directory mount: a single-file bind mount would not see an edited (replaced) file
    source = DEPLOY / "compose" / mounts(gw)[str(config.parent)]
    assert source.is_dir()
    return source / config.name


def test_compose_gateway(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    assert {*GATEWAYS, "haproxy", "redis", "traefik", "lgtm", "certs", "demo-grpc"} <= set(services)
    # the replicas: one config file, each its own queue volume and admin port
    configs = {compose_gateway_config(compose, name) for name in GATEWAYS}
    assert len(configs) == 1
    queues = [mounts(services[name])[DATA_DIR] for name in GATEWAYS]
    assert len(set(queues)) == len(GATEWAYS) and set(queues) <= set(compose["volumes"])
    admin_ports = [int(p.split(":")[1]) for n in GATEWAYS for p in services[n]["ports"]]
    assert len(set(admin_ports)) == len(GATEWAYS)
    assert all(p.endswith(f":{ADMIN_PORT}") for n in GATEWAYS for p in services[n]["ports"])
    gw = services[GATEWAYS[0]]
    build = gw["build"]
    assert (DEPLOY / "compose" / build["context"] / build["dockerfile"]).resolve() == (
        ROOT / "Dockerfile"
    )
    assert gw["command"] == ["serve", "--config", IMAGE_CONFIG]
    volumes = mounts(gw)
    config_file = compose_gateway_config(compose)
    text = config_file.read_text()
    env = service_env(gw)
    cfg = load_config(text, env, str(config_file))  # every ${VAR} it uses is provided
    check_container_config(cfg, text)
    assert volumes[DATA_DIR] in compose["volumes"]  # a named volume for the durable queue
    # backend: otel-lgtm's OTLP/HTTP receiver, on the compose network
    (backend,) = cfg.service_backends
    assert cfg.backends[backend].endpoint == "http://lgtm:4318"
    assert services["lgtm"]["image"].startswith("grafana/otel-lgtm:")
    assert all(p.startswith("127.0.0.1:") for p in gw["ports"])
    # the OTLP ports are HAProxy's
    haproxy = services["haproxy"]
    published = {int(p.split(":")[-1]) for p in haproxy["ports"]}
    assert published == OTLP_PORTS | {HAPROXY_STATS}
    assert all(p.startswith("127.0.0.1:") for p in haproxy["ports"])
    # Redis: the cluster section names the compose service
    assert cfg.cluster is not None and cfg.cluster.name == "prod-eu"
    redis_url = httpx.URL(cfg.cluster.redis)
    assert redis_url.host == "redis" and redis_url.port == 6379
    assert services["redis"]["image"].startswith("redis:")
    assert {"redis", "lgtm"} <= set(gw["depends_on"])
    # the demo tenant's key is the one the demo apps send
    demo_key = compose_demo_key(compose)
    assert cfg.tenants is not None
    assert keys.digest(demo_key) in cfg.tenants["demo"].api_keys
    # stop_grace_period above shutdown_timeout
    assert int(gw["stop_grace_period"].rstrip("s")) > cfg.shutdown_timeout
    serve_and_probe(tmp_path, text, env, demo_key, ["/healthz", "/readyz"])


def test_compose_traefik_and_demo(compose: dict[str, Any]) -> None:
    services = compose["services"]
    traefik = services["traefik"]
    flags = dict(f.removeprefix("--").split("=", 1) for f in traefik["command"])
    entry_port = int(flags["entrypoints.websecure.address"].lstrip(":"))
    assert f":{entry_port}" in " ".join(traefik["ports"])
    tmounts = mounts(traefik)
    dynamic_dir = DEPLOY / "compose" / tmounts[flags["providers.file.directory"]]
    (dynamic_file,) = dynamic_dir.glob("*.yml")
    dynamic = yaml.safe_load(dynamic_file.read_text())

    gateway_text = compose_gateway_config(compose).read_text()
    cfg = load_config(gateway_text, service_env(services[GATEWAYS[0]]), "compose")
    (router,) = dynamic["http"]["routers"].values()
    assert router["entryPoints"] == ["websecure"] and "tls" in router
    service = dynamic["http"]["services"][router["service"]]["loadBalancer"]
    (server,) = service["servers"]
    url = httpx.URL(server["url"])
    # HTTP/2 cleartext to HAProxy, which balances over the replicas and checks their /readyz
    assert url.scheme == "h2c" and url.host == "haproxy"
    assert url.port in OTLP_PORTS and f"0.0.0.0:{url.port}" in cfg.listen
    assert "healthCheck" not in service

    # TLS: the certificate files come from the certs service, for the names clients use
    certs = services["certs"]
    assert certs["command"][:3] == ["python", "make_certs.py", "/certs"]
    cert_hosts = certs["command"][3:]
    cert_volume = mounts(certs)["/certs"]
    assert tmounts["/certs"] == cert_volume
    made = {"/certs/ca.pem", "/certs/tls.crt", "/certs/tls.key"}
    for cert in dynamic["tls"]["certificates"]:
        assert {cert["certFile"], cert["keyFile"]} <= made
    hosts = re.findall(r"Host\(`([^`]+)`\)", router["rule"])
    assert set(hosts) <= set(cert_hosts)
    aliases = traefik["networks"]["default"]["aliases"]

    # the demo apps: through Traefik over TLS, trusting the demo CA, with the demo key
    for name in DEMO_APPS:
        demo = services[name]
        env = service_env(demo)
        endpoint = httpx.URL(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.scheme == "https" and (endpoint.port or 443) == entry_port
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(f":{entry_port}")  # for every SDK
        assert endpoint.host in aliases and endpoint.host in hosts
        assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"] in made
        assert mounts(demo)["/certs"] == cert_volume
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] in ("grpc", "http/protobuf")
        assert env["OTEL_EXPORTER_OTLP_HEADERS"] == (
            f"authorization=Bearer%20{compose_demo_key(compose)}"
        )
        assert (DEPLOY / "compose" / demo["build"] / "app.py").is_file()
    protocols = {services[n]["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] for n in DEMO_APPS}
    assert protocols == {"grpc", "http/protobuf"}


def test_compose_demo_app_sends_all_signals_through_tls(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The compose demo as it runs there, with a gateway serving TLS in place of Traefik: the
    certs service's script makes the certificate, the gateway runs the compose config, the demo
    app sends traces, metrics and logs with the compose environment, over gRPC and over HTTP."""
    demo_dir = DEPLOY / "compose/demo"
    certs = tmp_path / "certs"
    subprocess.run(
        [sys.executable, str(demo_dir / "make_certs.py"), str(certs), "localhost", "127.0.0.1"],
        check=True,
        timeout=60,
    )
    services = compose["services"]
    gateway_text = compose_gateway_config(compose).read_text()
    gw_env = service_env(services[GATEWAYS[0]])
    with Sink().running() as sink:
        data = local_copy(gateway_text, sink, tmp_path)
        args = ["--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key")]
        with serve(tmp_path, data, args, env=gw_env) as gw:
            for name, port in (("demo-grpc", gw.grpc_port), ("demo-http", gw.http_port)):
                env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
                for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
                    env.pop(var, None)
                env.update(service_env(services[name]))
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"https://127.0.0.1:{port}"
                env["OTEL_EXPORTER_OTLP_CERTIFICATE"] = str(certs / "ca.pem")
                env["OTEL_SERVICE_NAME"] = name
                run = subprocess.run(
                    [sys.executable, "app.py", "--orders", "3", "--interval", "0"],
                    cwd=demo_dir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert run.returncode == 0, run.stderr
                assert "placed 3 orders" in run.stdout

                def got(signal: str, service: str = name) -> list[Any]:
                    return [
                        r
                        for m in sink.messages(signal)
                        for r in getattr(m, f"resource_{signal if signal != 'traces' else 'spans'}")
                        if _attr(r.resource, "service.name") == service
                    ]

                assert wait_until(lambda: got("traces") and got("metrics") and got("logs"))
                for signal in ("traces", "metrics", "logs"):
                    for r in got(signal):
                        assert _attr(r.resource, "tenant.id") == "demo"
                        assert _attr(r.resource, "deployment.environment") == "demo"
                spans = [s.name for r in got("traces") for ss in r.scope_spans for s in ss.spans]
                assert sorted(set(spans)) == ["POST /checkout", "SELECT stock"]
                assert wait_until(lambda: len(_log_bodies(got("logs"))) >= 3)
                assert "order 1 placed: one" in " ".join(_log_bodies(got("logs")))
                metric_names = {
                    m.name for r in got("metrics") for sm in r.scope_metrics for m in sm.metrics
                }
                assert {"shop.orders", "shop.checkout.duration"} <= metric_names


def _attr(resource: Any, key: str) -> str | None:
    for a in resource.attributes:
        if a.key == key:
            return str(a.value.string_value)
    return None


def _log_bodies(resource_logs: list[Any]) -> list[str]:
    return [
        rec.body.string_value
        for r in resource_logs
        for sl in r.scope_logs
        for rec in sl.log_records
    ]


# ---------------------------------------------------------------------------------------------
# Nomad


@pytest.fixture(scope="module")
def nomad() -> dict[str, Any]:
    return hcl(DEPLOY / "nomad/otlp-gateway.nomad.hcl")


def nomad_group(job: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The job's group `name`, or its only group."""
    (job_body,) = job["job"][0].values()
    groups = {n: body for g in job_body["group"] for n, body in g.items()}
    if name is None:
        (group,) = groups.values()
    else:
        group = groups[name]
    return dict(group)


def nomad_task(group: dict[str, Any]) -> dict[str, Any]:
    (task,) = group["task"][0].values()
    return dict(task)


NOMAD_SERVICES: dict[str, list[dict[str, Any]]] = {
    "otel-lgtm-http": [{"Address": "10.0.0.7", "Port": 23456}],
    "otlp-gateway-redis": [{"Address": "10.0.0.8", "Port": 26379}],
    "otlp-gateway-grpc": [
        {"Address": "10.0.0.11", "Port": 21001},
        {"Address": "10.0.0.12", "Port": 21002},
        {"Address": "10.0.0.13", "Port": 21003},
    ],
}
NOMAD_VARS = {
    "admin_key": "admin-key-for-the-test",
    "demo_key_sha256": keys.config_entry("otlpgw_nomad-test-key"),
    "backend_token": "backend-token-for-the-test",
}


def nomad_config(nomad: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The rendered gateway config and the task's environment."""
    task = nomad_task(nomad_group(nomad, "gateway"))
    (template,) = task["template"]
    variables = {"nomad/jobs/otlp-gateway": NOMAD_VARS}
    text = render_nomad_template(hcl_text(template["data"]), variables, NOMAD_SERVICES)
    env = {k: hcl_text(str(v)) for k, v in task.get("env", [{}])[0].items()}
    return text, env


def test_nomad_job_parses_and_agrees_with_the_gateway(nomad: dict[str, Any]) -> None:
    header = (DEPLOY / "nomad/otlp-gateway.nomad.hcl").read_text().split("\nvariable")[0]
    group = nomad_group(nomad, "gateway")
    task = nomad_task(group)
    text, env = nomad_config(nomad)
    cfg = load_config(text, env, "nomad template")
    check_container_config(cfg, text)
    assert "{{" not in text and "$${" not in text
    # every item of the variable the template reads is in the header's `nomad var put`
    template_text = hcl_text(task["template"][0]["data"])
    for item in re.findall(r"\{\{ \.([a-z_]+) \}\}", template_text):
        assert f"{item}=" in header, item
    assert cfg.tenants is not None
    assert cfg.tenants["demo"].api_keys == (NOMAD_VARS["demo_key_sha256"].removeprefix("sha256:"),)
    (backend,) = cfg.service_backends
    assert cfg.backends[backend].endpoint == "http://10.0.0.7:23456"
    assert cfg.backends[backend].headers["Authorization"] == "Bearer backend-token-for-the-test"

    # ports: the listeners and the admin listener behind the group's ports
    ports = {name: body for p in group["network"][0]["port"] for name, body in p.items()}
    assert {ports["grpc"]["to"], ports["http"]["to"]} == {port_of(a) for a in cfg.listen}
    assert ports["admin"]["to"] == port_of(admin_listen(text))
    config = task["config"][0]
    assert set(config["ports"]) == set(ports)
    assert config["image"] == "${var.image}"
    # the config path given to serve is where the template is rendered (secrets/ -> /secrets)
    template = task["template"][0]
    assert config["args"] == ["serve", "--config", "/" + template["destination"]]
    assert template["destination"].startswith("secrets/")
    assert (template["change_mode"], template["change_signal"]) == ("signal", "SIGHUP")
    assert template["uid"] == container_uid()

    # services with health checks on the admin listener
    services = {s["name"]: s for s in group["service"] + task.get("service", [])}
    assert {"otlp-gateway-grpc", "otlp-gateway-http", "otlp-gateway-admin"} <= set(services)
    for name, path in (
        ("otlp-gateway-grpc", "/readyz"),
        ("otlp-gateway-http", "/readyz"),
        ("otlp-gateway-admin", "/healthz"),
    ):
        (check,) = services[name]["check"]
        assert check["type"] == "http" and check["path"] == path
        assert check.get("port", services[name]["port"]) == "admin"
    assert services["otlp-gateway-grpc"]["port"] == "grpc"
    assert "check_restart" in services["otlp-gateway-admin"]["check"][0]
    tags = services["otlp-gateway-http"]["tags"]
    assert "traefik.http.services.otlp-gateway.loadbalancer.server.scheme=h2c" in tags

    # durable queue on a host volume mounted at the data directory; one allocation per host
    (volume,) = group["volume"][0].values()
    assert volume["type"] == "host" and volume["read_only"] is False
    (mount,) = task["volume_mount"]
    assert mount["destination"] == DATA_DIR
    assert {"operator": "distinct_hosts", "value": "true"} in group["constraint"]

    # memory: at least the measured peak (docs/deploy.md), far above Nomad's 300 MB default
    resources = task["resources"][0]
    assert resources["memory"] >= 384 and resources["memory_max"] >= resources["memory"]
    assert int(str(task["kill_timeout"]).rstrip("s")) > cfg.shutdown_timeout


def test_nomad_backend_job(nomad: dict[str, Any]) -> None:
    lgtm = hcl(DEPLOY / "nomad/otel-lgtm.nomad.hcl")
    group = nomad_group(lgtm)
    ports = {name: body for p in group["network"][0]["port"] for name, body in p.items()}
    services = {s["name"]: s for s in group["service"]}
    text, _ = nomad_config(nomad)
    template = hcl_text(nomad_task(nomad_group(nomad, "gateway"))["template"][0]["data"])
    used = re.findall(r'nomadService "([^"]+)"', template)
    assert used == ["otel-lgtm-http", "otlp-gateway-redis"]
    assert ports[services["otel-lgtm-http"]["port"]]["to"] == 4318  # its OTLP/HTTP receiver
    task = nomad_task(group)
    assert task["config"][0]["image"].startswith("grafana/otel-lgtm:")
    assert task["resources"][0]["memory"] >= 2048
    assert "http/protobuf" in text


def test_nomad_config_serves(nomad: dict[str, Any], tmp_path: Path) -> None:
    text, env = nomad_config(nomad)
    key = "otlpgw_nomad-test-key"
    serve_and_probe(tmp_path, text, env, key, ["/healthz", "/readyz"])


# ---------------------------------------------------------------------------------------------
# Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, from the files kustomization.yaml lists."""
    base = DEPLOY / "kubernetes"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "every manifest is listed in kustomization.yaml"
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((base / name).read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), name
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def pod_container(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (container,) = k8s[("StatefulSet", "otlp-gateway")]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def k8s_config(k8s: dict[tuple[str, str], dict[str, Any]]) -> tuple[str, dict[str, str]]:
    """The ConfigMap's gateway config and the container's environment (Secret + env)."""
    container = pod_container(k8s)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        secret = k8s[("Secret", source["secretRef"]["name"])]
        env.update(secret["stringData"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    config_dir = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config_path = PurePosixPath(container["args"][container["args"].index("--config") + 1])
    assert config_path.parent == PurePosixPath(config_dir["mountPath"])
    assert "subPath" not in config_dir  # a subPath mount never sees ConfigMap updates
    pod = k8s[("StatefulSet", "otlp-gateway")]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    text = k8s[("ConfigMap", volume["configMap"]["name"])]["data"][config_path.name]
    return text, env


def test_kubernetes_manifests_agree_with_the_gateway(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    text, env = k8s_config(k8s)
    cfg = load_config(text, env, "ConfigMap")  # every ${VAR} comes from the Secret or env
    check_container_config(cfg, text)
    sts = k8s[("StatefulSet", "otlp-gateway")]
    pod = sts["spec"]["template"]["spec"]
    container = pod_container(k8s)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # ports: names the Services and probes use, numbers the config listens on
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {ports["grpc"], ports["http"]} == {port_of(a) for a in cfg.listen}
    assert ports["admin"] == port_of(admin_listen(text))
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "admin"}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["args"] == ["serve", "--config", IMAGE_CONFIG]

    # durable queue: a volume per replica, mounted at the data directory
    queue_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == DATA_DIR)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == queue_mount["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"

    # runs as the image's user, read-only root, resources set
    assert pod["securityContext"]["runAsUser"] == container_uid()
    assert pod["securityContext"]["fsGroup"] == container_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["terminationGracePeriodSeconds"] > cfg.shutdown_timeout
    resources = container["resources"]
    assert resources["requests"]["memory"] == "256Mi" and resources["limits"]["memory"] == "512Mi"
    nomad_job = hcl(DEPLOY / "nomad/otlp-gateway.nomad.hcl")
    nomad_task_resources = nomad_task(nomad_group(nomad_job, "gateway"))
    assert nomad_task_resources["resources"][0]["memory_max"] == 512  # the same measured limit

    # image: the name kustomize rewrites
    kustomization = yaml.safe_load((DEPLOY / "kubernetes/kustomization.yaml").read_text())
    assert container["image"] in {i["name"] for i in kustomization["images"]}

    # Services: select the pods, target named ports, gRPC as h2c
    service = k8s[("Service", "otlp-gateway")]
    headless = k8s[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"]
        grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["appProtocol"] == "kubernetes.io/h2c"

    pdb = k8s[("PodDisruptionBudget", "otlp-gateway")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = k8s[("HorizontalPodAutoscaler", "otlp-gateway")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", "otlp-gateway")
    assert hpa["spec"]["minReplicas"] >= 2


def test_kubernetes_ingress_routes_grpc_and_http(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    text, env = k8s_config(k8s)
    cfg = load_config(text, env, "ConfigMap")
    service = k8s[("Service", "otlp-gateway")]
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    ingresses = [o for (kind, _), o in k8s.items() if kind == "Ingress"]
    by_protocol = {
        i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"]: i
        for i in ingresses
    }
    assert set(by_protocol) == {"GRPC", "HTTP"}
    hosts = set()
    for ingress in ingresses:
        spec = ingress["spec"]
        annotations = ingress["metadata"]["annotations"]
        body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
        assert int(body.rstrip("m")) * 2**20 >= cfg.limits.max_body_bytes
        (tls,) = spec["tls"]
        assert tls["secretName"]
        for rule in spec["rules"]:
            assert rule["host"] in tls["hosts"]
            hosts.add(rule["host"])
            for path in rule["http"]["paths"]:
                if path["pathType"] in ("Prefix", "Exact"):  # ingress-nginx's strict validation
                    assert re.fullmatch(r"/[A-Za-z0-9/_-]*", path["path"]), path["path"]
                else:
                    assert path["pathType"] == "ImplementationSpecific"
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["name"] in service_ports
    assert len(hosts) == 1, "one host for every transport"

    def paths(ingress: dict[str, Any]) -> dict[str, str]:
        return {
            p["path"]: p["backend"]["service"]["port"]["name"]
            for r in ingress["spec"]["rules"]
            for p in r["http"]["paths"]
        }

    grpc_paths = paths(by_protocol["GRPC"])
    assert set(grpc_paths) == {f"/{s.service}" for s in SIGNALS}  # every OTLP gRPC service
    assert set(grpc_paths.values()) == {"grpc"}
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    http_paths = paths(by_protocol["HTTP"])
    for signal in SIGNALS:  # every OTLP/HTTP path falls under a Prefix path
        parts = PurePosixPath(signal.http_path).parts
        assert any(
            PurePosixPath(p).parts == parts[: len(PurePosixPath(p).parts)] for p in http_paths
        ), signal.http_path
    assert set(http_paths.values()) == {"http"}


def test_kubernetes_config_serves(
    k8s: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    text, env = k8s_config(k8s)
    container = pod_container(k8s)
    probes = [container[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")]
    demo_key = "otlpgw_demo-only-replace-me-with-otlp-gateway-keys-new"  # the compose demo's
    serve_and_probe(tmp_path, text, env, demo_key, probes)


def test_kustomize_builds(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = cli.run([kubectl, "kustomize", str(DEPLOY / "kubernetes")], timeout=120).stdout
    built = list(yaml.safe_load_all(out))
    assert {(d["kind"], d["metadata"]["name"]) for d in built} == set(k8s)
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "otlp-gateway"
        if doc["kind"] == "StatefulSet":
            image = doc["spec"]["template"]["spec"]["containers"][0]["image"]
            assert image == "otlp-gateway:0.1.0"


# ---------------------------------------------------------------------------------------------
# Docs


def test_docs_name_files_that_exist() -> None:
    for doc in ("docs/deploy.md", "docs/clients.md"):
        text = (ROOT / doc).read_text()
        for path in set(re.findall(r"`((?:deploy|docs|tests|bench)/[\w./-]+)`", text)):
            assert (ROOT / path).exists(), f"{doc} names {path}"


def test_healthcheck_url_is_fetchable_python() -> None:
    """The HEALTHCHECK runs `python -c` in the image: the code must compile and use only the
    standard library."""
    runtime = stages()[-1]
    health = exec_form(args_of(runtime, "HEALTHCHECK")[-1].split(" CMD ", 1)[1])
    assert health[:2] == ["python", "-c"]
    compile(health[2], "HEALTHCHECK", "exec")
    imported = set(re.findall(r"import ([\w., ]+)", health[2])[0].replace(" ", "").split(","))
    assert imported <= {"sys", "urllib.request"}


# ---------------------------------------------------------------------------------------------
# The balancer (deploy/haproxy/haproxy.cfg) and the fleet: Redis, drain


def haproxy_lines(section: str) -> list[str]:
    """The directive lines of a haproxy.cfg section (`defaults`, `backend gateways`), comments
    and conditional-block markers left out."""
    out: list[str] = []
    current = None
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith(".") else ""
        if not line:
            continue
        if not line.startswith(" "):
            current = line.strip()
            continue
        if current == section:
            out.append(line.strip())
    return out


def test_haproxy_cfg_balances_per_request_over_h2c() -> None:
    defaults = haproxy_lines("defaults")
    backend = haproxy_lines("backend gateways")
    assert "mode http" in defaults  # L7: every request (HTTP/2 stream) is balanced on its own
    assert "balance roundrobin" in backend
    default_server = next(line for line in backend if line.startswith("default-server"))
    for word in ("proto h2", "check", "check-proto h1", "init-addr last,libc,none"):
        assert word in default_server
    assert "option httpchk GET /readyz" in backend
    assert "retry-on conn-failure empty-response 503" in defaults
    assert "option redispatch 1" in defaults
    servers = [line for line in backend if line.startswith("server ")]
    assert len(servers) == HAPROXY_SLOTS
    for i, line in enumerate(servers, 1):
        assert line == f'server gw{i} "${{GATEWAY_{i}}}" port "${{GATEWAY_{i}_ADMIN_PORT-9464}}"'
    bind = next(line for line in haproxy_lines("frontend otlp") if line.startswith("bind"))
    assert bind == 'bind "${OTLP_BIND-:4317,:4318}"'  # both OTLP ports, every transport
    assert f'bind "${{STATS_BIND-:{HAPROXY_STATS}}}"' in haproxy_lines("frontend stats")

    # it checks with replicas given, and says what to set without them
    out = haproxy_check({"GATEWAY_1": "127.0.0.1:4317", "GATEWAY_2": "127.0.0.1:14317"})
    assert "ALERT" not in out
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    bare = subprocess.run([binary, "-c", "-f", str(HAPROXY_CFG)], env={}, capture_output=True)
    assert bare.returncode != 0 and b"set GATEWAY_1" in bare.stdout + bare.stderr


def test_compose_haproxy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    haproxy = services["haproxy"]
    assert haproxy["image"].startswith("haproxy:2.")
    # the official image reads /usr/local/etc/haproxy/haproxy.cfg: this repository's file
    source = mounts(haproxy)["/usr/local/etc/haproxy"]
    assert (DEPLOY / "compose" / source / "haproxy.cfg").resolve() == HAPROXY_CFG
    env = service_env(haproxy)
    cfg = load_config(
        compose_gateway_config(compose).read_text(), service_env(services[GATEWAYS[0]]), "compose"
    )
    haproxy_env_check(env, cfg.listen)
    assert [httpx.URL(f"h2c://{env[f'GATEWAY_{i}']}").host for i in (1, 2, 3)] == list(GATEWAYS)
    assert set(haproxy["depends_on"]) == set(GATEWAYS)
    haproxy_check(env)  # the names do not resolve here: servers start down, the file is valid


def test_kubernetes_balancer_and_redis(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    text, env = k8s_config(k8s)
    cfg = load_config(text, env, "ConfigMap")
    # the ConfigMap is deploy/haproxy/haproxy.cfg as it is
    cm = k8s[("ConfigMap", "otlp-gateway-haproxy")]
    assert cm["data"]["haproxy.cfg"] == HAPROXY_CFG.read_text()
    deployment = k8s[("Deployment", "otlp-gateway-balancer")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("haproxy:2.")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/usr/local/etc/haproxy"
    assert container["args"] == ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    hpa_max = k8s[("HorizontalPodAutoscaler", "otlp-gateway")]["spec"]["maxReplicas"]
    haproxy_env = {e["name"]: e["value"] for e in container["env"]}
    haproxy_env_check(haproxy_env, cfg.listen)
    # every pod the HPA may run, by its stable name in the headless Service (fully qualified:
    # HAProxy's resolver does not use the search list)
    sts = k8s[("StatefulSet", "otlp-gateway")]
    kustomization = yaml.safe_load((DEPLOY / "kubernetes/kustomization.yaml").read_text())
    namespace = kustomization["namespace"]
    assert len(haproxy_env) == hpa_max
    for i in range(hpa_max):
        assert haproxy_env[f"GATEWAY_{i + 1}"] == (
            f"otlp-gateway-{i}.{sts['spec']['serviceName']}.{namespace}.svc.cluster.local:4317"
        )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {ports["grpc"], ports["http"]} == OTLP_PORTS and ports["stats"] == HAPROXY_STATS
    service = k8s[("Service", "otlp-gateway-balancer")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    gateway_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= gateway_labels.items()
    for port in service["spec"]["ports"]:
        assert ports[port["targetPort"]] == port["port"]
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["appProtocol"] == "kubernetes.io/h2c"
    haproxy_check(haproxy_env)

    # Redis: the Service the cluster section names
    assert cfg.cluster is not None and cfg.cluster.name == "prod-eu"
    url = httpx.URL(cfg.cluster.redis)
    redis_service = k8s[("Service", str(url.host))]
    assert [p["port"] for p in redis_service["spec"]["ports"]] == [url.port]
    redis = k8s[("Deployment", str(url.host))]
    assert redis_service["spec"]["selector"].items() <= (
        redis["spec"]["template"]["metadata"]["labels"].items()
    )
    (redis_container,) = redis["spec"]["template"]["spec"]["containers"]
    assert redis_container["image"].startswith("redis:")


def test_kubernetes_drain_job(k8s: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> None:
    """The Job mounts a removed pod's volume (the StatefulSet's claim) where the gateway had it,
    with the same config and environment, and runs `drain` on the config's queue directory; its
    command, run here on an empty directory, exits 0."""
    job = yaml.safe_load((DEPLOY / "kubernetes/drain/drain-job.yaml").read_text())
    assert job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    gateway = pod_container(k8s)
    sts = k8s[("StatefulSet", "otlp-gateway")]
    text, env = k8s_config(k8s)
    cfg = load_config(text, env, "ConfigMap")
    args = container["args"]
    assert args[0] == "drain"
    assert args[args.index("--config") + 1] == IMAGE_CONFIG
    queue_dir = args[args.index("--queue-dir") + 1]
    (backend,) = cfg.service_backends
    assert queue_dir == cfg.backends[backend].queue.directory
    # the same config, secrets and user as the replicas
    assert container["envFrom"] == gateway["envFrom"] and container["env"] == gateway["env"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts_at = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts_at["/etc/otlp-gateway"]]["configMap"]["name"] == "otlp-gateway"
    assert pod["securityContext"]["runAsUser"] == container_uid()
    # the queue: a claim of the StatefulSet's template (<template>-<statefulset>-<ordinal>)
    claim = volumes[mounts_at[DATA_DIR]]["persistentVolumeClaim"]["claimName"]
    (template,) = sts["spec"]["volumeClaimTemplates"]
    assert re.fullmatch(rf"{template['metadata']['name']}-otlp-gateway-\d+", claim), claim
    # applied by hand, not through kustomize: the image as kustomize names the replicas'
    (image,) = yaml.safe_load((DEPLOY / "kubernetes/kustomization.yaml").read_text())["images"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"

    # the command itself, with the paths made local
    drain_locally(tmp_path, text, args, env)


def drain_locally(tmp: Path, config_text: str, args: list[str], env: dict[str, str]) -> None:
    """A drain job's own command, its volume and config made local, on an empty queue."""
    config = tmp / "gateway.yaml"
    config.write_text(config_text)
    local = [a.replace(DATA_DIR, str(tmp / "volume")) for a in args]
    local[local.index("--config") + 1] = str(config)
    (tmp / "volume" / "queue").mkdir(parents=True)
    done = cli.run([sys.executable, "-m", "gateway", *local], timeout=60, env={**os.environ, **env})
    assert "nothing to drain" in done.stdout


def nomad_env_file(text: str) -> dict[str, str]:
    """A rendered `env = true` template: NAME=value lines."""
    return dict(line.split("=", 1) for line in text.splitlines() if line.strip())


def test_nomad_balancer_and_redis(nomad: dict[str, Any]) -> None:
    text, env = nomad_config(nomad)
    cfg = load_config(text, env, "nomad template")
    gateway = nomad_group(nomad, "gateway")
    group = nomad_group(nomad, "balancer")
    task = nomad_task(group)
    assert task["config"][0]["image"].startswith("haproxy:2.")
    # the file itself, read by `nomad job run` in deploy/nomad (file() resolves from there)
    config_template, env_template = task["template"]
    m = re.fullmatch(r'\$\{file\("([^"]+)"\)\}', config_template["data"])
    assert m, config_template["data"]
    assert (DEPLOY / "nomad" / m.group(1)).resolve() == HAPROXY_CFG
    assert task["config"][0]["args"] == ["haproxy", "-f", "/" + config_template["destination"]]
    # the replicas from service discovery: the gateway group's gRPC service
    assert env_template["env"] is True
    rendered = render_nomad_template(hcl_text(env_template["data"]), {}, NOMAD_SERVICES)
    haproxy_env = nomad_env_file(rendered)
    assert haproxy_env == {
        f"GATEWAY_{i}": f"{s['Address']}:{s['Port']}"
        for i, s in enumerate(NOMAD_SERVICES["otlp-gateway-grpc"], 1)
    }
    used = re.findall(r'nomadService "([^"]+)"', hcl_text(env_template["data"]))
    grpc_service = next(s for s in gateway["service"] if s["name"] == used[0])
    assert grpc_service["port"] == "grpc"
    gateway_ports = {n: body for p in gateway["network"][0]["port"] for n, body in p.items()}
    # the replicas' OTLP ports are dynamic (the balancer holds 4317 and 4318); the admin port is
    # static, where haproxy.cfg checks /readyz by default
    assert "static" not in gateway_ports["grpc"] and "static" not in gateway_ports["http"]
    assert gateway_ports["admin"]["static"] == port_of(admin_listen(text)) == 9464
    assert {"operator": "distinct_hosts", "value": "true"} in gateway["constraint"]
    ports = {n: body for p in group["network"][0]["port"] for n, body in p.items()}
    assert {ports["grpc"]["static"], ports["http"]["static"]} == OTLP_PORTS
    assert ports["stats"]["to"] == HAPROXY_STATS
    haproxy_env_check(haproxy_env, tuple(f"0.0.0.0:{s['Port']}" for s in NOMAD_SERVICES[used[0]]))
    haproxy_check(haproxy_env)
    # the replica count fits the balancer's slots
    variables = hcl(DEPLOY / "nomad/otlp-gateway.nomad.hcl")["variable"]
    replicas = next(v["replicas"] for v in variables if "replicas" in v)
    assert 1 < replicas["default"] <= HAPROXY_SLOTS

    # Redis: its job registers the service the template reads
    assert cfg.cluster is not None and cfg.cluster.name == "prod-eu"
    assert cfg.cluster.redis == "redis://10.0.0.8:26379/0"
    redis = nomad_group(hcl(DEPLOY / "nomad/redis.nomad.hcl"))
    (service,) = redis["service"]
    assert service["name"] == "otlp-gateway-redis"
    redis_ports = {n: body for p in redis["network"][0]["port"] for n, body in p.items()}
    assert redis_ports[service["port"]]["to"] == 6379
    assert nomad_task(redis)["config"][0]["image"].startswith("redis:")
    # without Redis registered, the config has no cluster section (and still loads)
    task = nomad_task(gateway)
    variables_only = {"nomad/jobs/otlp-gateway": NOMAD_VARS}
    services = {k: v for k, v in NOMAD_SERVICES.items() if k != "otlp-gateway-redis"}
    alone = render_nomad_template(hcl_text(task["template"][0]["data"]), variables_only, services)
    assert load_config(alone, env, "nomad template").cluster is None


def test_nomad_drain_job(nomad: dict[str, Any], tmp_path: Path) -> None:
    """The batch job runs `drain` on the host volume the replicas use, mounted where they mount
    it, with the gateway job's own config template; its command, run here on an empty queue
    directory, exits 0."""
    job = hcl(DEPLOY / "nomad/otlp-gateway-drain.nomad.hcl")
    (body,) = job["job"][0].values()
    assert body["type"] == "batch"
    assert {"attribute": "${node.unique.name}", "value": "${var.node}"} in body["constraint"]
    group = nomad_group(job)
    task = nomad_task(group)
    gateway = nomad_group(nomad, "gateway")
    gateway_task = nomad_task(gateway)
    (volume,) = group["volume"][0].values()
    (gateway_volume,) = gateway["volume"][0].values()
    assert volume == gateway_volume  # the same host volume
    assert task["volume_mount"] == gateway_task["volume_mount"]
    (template,) = task["template"]
    assert template["data"] == gateway_task["template"][0]["data"]
    assert template["destination"] == gateway_task["template"][0]["destination"]
    text, env = nomad_config(nomad)
    cfg = load_config(text, env, "nomad template")
    args = task["config"][0]["args"]
    assert args[0] == "drain"
    assert args[args.index("--config") + 1] == "/" + template["destination"]
    (backend,) = cfg.service_backends
    queue_dir = args[args.index("--queue-dir") + 1]
    assert queue_dir == cfg.backends[backend].queue.directory
    assert PurePosixPath(queue_dir).is_relative_to(task["volume_mount"][0]["destination"])
    assert task["config"][0]["image"] == "${var.image}"

    drain_locally(tmp_path, text, args, env)

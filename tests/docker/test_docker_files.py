"""docker/ without a Docker engine: the files parse, name what exists in the repo and agree with pyproject.toml."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from nas_kd.cli import build_parser
from nas_kd.search.metrics import EXPORTED_NAMES, METRICS

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
APP = "/home/ray/nas-kd"  # the images' WORKDIR: the repository's root inside a container
DOCKERFILES = {"nas-kd:cpu": DOCKER / "Dockerfile.cpu", "nas-kd:cuda": DOCKER / "Dockerfile.cuda"}
RAY_IMAGE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<py_minor>\d+)-(?P<platform>cpu|gpu|cu\d+)$"
)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_specifier() -> SpecifierSet:
    requirements = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return next(r.specifier for r in requirements if r.name == "ray")


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text())
    return [
        (line.split()[0].upper(), line.split(maxsplit=1)[1])
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def rayjob() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((DOCKER / "kuberay-rayjob.yaml").read_text()))
    return next(d for d in documents if d["kind"] == "RayJob")


def search_argv(command: str) -> list[str]:
    """``nas-kd search ...`` as the CLI parses it, container paths mapped to the repository."""
    argv = shlex.split(command)
    assert argv[0] in pyproject()["project"]["scripts"], f"{argv[0]} is not a console script of the package"
    return [a.replace(APP, str(ROOT)) for a in argv[1:]]


def parse_cli(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"nas-kd does not accept: nas-kd {shlex.join(argv)}")


def assert_study_exists(path: str) -> None:
    if not Path(path).is_file():
        pytest.fail(f"{Path(path).relative_to(ROOT)} is referenced by docker/ but not in the repository")


# -- images -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", sorted(DOCKERFILES))
def test_dockerfile_builds_on_the_ray_image_pyproject_asks_for(tag: str) -> None:
    instructions = dockerfile(DOCKERFILES[tag])
    base = RAY_IMAGE.match(next(args for op, args in instructions if op == "FROM"))
    assert base, "build on an official rayproject/ray:<version>-py<XY>-<cpu|gpu|cuXXX> image"
    assert base["ray"] in ray_specifier(), f"the image's Ray {base['ray']} is outside pyproject's {ray_specifier()}"
    python = f"{base['py']}.{base['py_minor']}"
    assert python in SpecifierSet(pyproject()["project"]["requires-python"])
    assert (base["platform"] == "cpu") == tag.endswith(":cpu")
    assert ("WORKDIR", APP) in instructions
    assert any(op == "RUN" and "pip install" in args and " . " in f"{args} " for op, args in instructions)
    for op, args in instructions:
        if op == "COPY":
            *sources, _ = [a for a in args.split() if not a.startswith("--")]
            missing = [s for s in sources if not (ROOT / s).exists()]
            assert not missing, f"{DOCKERFILES[tag].name} copies {missing}, which the repository lacks"


def test_dockerfile_torch_pins_agree_with_pyproject() -> None:
    requirements = {r.name: r.specifier for r in map(Requirement, pyproject()["project"]["dependencies"])}
    for path in DOCKERFILES.values():
        for name, version in re.findall(r"\b(torch|torchvision)==([\w.]+)", path.read_text()):
            assert version in requirements[name], f"{path.name}: {name}=={version} vs pyproject {requirements[name]}"


# -- compose ------------------------------------------------------------------------------------------------


def test_compose_runs_a_head_and_scalable_workers() -> None:
    services = compose()["services"]
    for name, service in services.items():
        if "build" in service:
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILES[
                service["image"]
            ], name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which docker/ lacks"
    head, worker = services["head"], services["worker"]
    assert shlex.split(head["command"])[:3] == ["ray", "start", "--head"]
    assert "--address=head:6379" in shlex.split(worker["command"])
    assert "ports" not in worker and "container_name" not in worker  # `--scale worker=N` needs both absent
    assert {"prometheus", "grafana"} <= {n for n, s in services.items() if "monitoring" in s.get("profiles", [])}


def test_compose_dashboard_is_local_and_token_protected() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
        if "build" in service:
            assert service["environment"]["RAY_AUTH_MODE"] == "token", name
            assert "RAY_AUTH_TOKEN" in service["environment"], name
    if "--dashboard-host=0.0.0.0" in services["head"]["command"]:
        comment = text[: text.index("--dashboard-host=0.0.0.0")].rsplit("command:", 1)[0][-600:]
        assert "token auth" in comment and "trusted network" in comment


def test_compose_metrics_ports_match_prometheus_discovery() -> None:
    services = compose()["services"]
    for name in ("head", "worker", "gpu-worker"):
        assert "--metrics-export-port=8080" in services[name]["command"], name
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    files = [f for job in config["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]  # written by Ray's head under /tmp/ray
    ray_tmp = [v for v in services["head"]["volumes"] if v.endswith(":/tmp/ray")]
    assert ray_tmp and any(v.startswith(ray_tmp[0]) for v in services["prometheus"]["volumes"])


def test_compose_search_command_parses() -> None:
    command = next(
        line.split(" exec head ", 1)[1]
        for line in (DOCKER / "compose.yaml").read_text().splitlines()
        if " exec head nas-kd search" in line
    )
    argv = search_argv(command)
    assert_study_exists(str(ROOT / argv[1]))
    args = parse_cli(argv)
    assert args.address == "auto"


# -- KubeRay ------------------------------------------------------------------------------------------------


def test_rayjob_runs_a_study_on_a_gpu_worker_group() -> None:
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] in ray_specifier()
    for tag in DOCKERFILES:
        assert cluster["rayVersion"] == RAY_IMAGE.match(dockerfile(DOCKERFILES[tag])[0][1])["ray"]
    assert cluster["authOptions"]["mode"] == "token"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert images <= set(DOCKERFILES), f"{images} are not images that docker/ builds"
    gpu_workers = [
        g
        for g in cluster["workerGroupSpecs"]
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_workers
    argv = search_argv(job["spec"]["entrypoint"])
    assert argv[0] == "search"
    assert_study_exists(argv[1])
    args = parse_cli(argv)
    assert args.address == "auto"


# -- monitoring ---------------------------------------------------------------------------------------------


def grafana_dashboard() -> dict[str, Any]:
    return json.loads((DOCKER / "grafana" / "dashboards" / "nas-kd.json").read_text())


def test_grafana_queries_only_metrics_that_nas_kd_defines() -> None:
    dashboard = grafana_dashboard()
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    used = {name for q in queries for name in re.findall(r"\bray_\w+", q)}
    assert used <= EXPORTED_NAMES, f"not defined in nas_kd/search/metrics.py: {used - EXPORTED_NAMES}"
    unused = {spec.exported_name for spec in METRICS.values()} - used
    assert not unused, f"metrics without a panel: {unused}"


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((provisioning / "dashboards" / "nas-kd.yml").read_text())["providers"][0]
    grafana = compose()["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert datasource["url"] == "http://prometheus:9090"
    uids = {p["datasource"]["uid"] for p in grafana_dashboard()["panels"]}
    assert uids == {datasource["uid"]}

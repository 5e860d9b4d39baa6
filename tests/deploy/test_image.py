"""The Dockerfile builds what the manifests run: python:3.11-slim, fuse3, the package only.

No image can be built here (no Docker daemon); these checks read the Dockerfile against
pyproject.toml and the manifests, so a new package directory or a renamed entry point cannot
be forgotten in the image.
"""

from __future__ import annotations

import json
import re
import tomllib

from tests.support.kustomize import DEPLOY, ROOT, load_yaml

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(keyword: str) -> list[str]:
    text = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.upper().startswith(keyword + " ")]


def packages() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    return {p.rstrip("*") for p in patterns}


def test_both_stages_are_python_311_slim():
    assert [f.split()[0] for f in instructions("FROM")] == ["python:3.11-slim"] * 2


def test_runtime_stage_installs_fuse3_and_no_compiler():
    runtime = DOCKERFILE[DOCKERFILE.rindex("\nFROM "):]
    installs = re.findall(r"apt-get install[^&]*", runtime.replace("\\\n", " "))
    assert len(installs) == 1 and "fuse3" in installs[0].split()
    assert not {"gcc", "libfuse3-dev", "build-essential"} & set(installs[0].split())


def test_every_package_is_copied_and_nothing_else():
    copied = {c.split()[0] for c in instructions("COPY") if not c.startswith("--from")}
    assert copied == packages() | {"pyproject.toml"}
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {f"!{p}/" for p in packages()} <= set(ignore) and "*" in ignore


def test_entrypoint_is_the_command_the_manifests_run():
    assert json.loads(instructions("ENTRYPOINT")[0]) == ["eddy"]
    for name in ("controller.yaml", "node.yaml"):
        for obj in load_yaml(DEPLOY / "base" / name):
            for c in obj["spec"]["template"]["spec"]["containers"]:
                if c["image"] == "eddy":
                    assert c["command"][0] == "eddy"


def test_default_user_is_not_root():
    assert instructions("USER") == ["65532:65532"]

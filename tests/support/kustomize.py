"""Render deploy/ kustomizations offline and validate the objects against Kubernetes schemas.

Rendering uses the real kustomize: `kubectl kustomize` (kustomize v5 is built into kubectl,
which this project's machines have) or a standalone `kustomize build`. Nothing is fetched:
every resource is a local path. Validation uses kubernetes-validate, which ships the API's
JSON schemas, in strict mode (unknown fields are errors).
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Oldest Kubernetes these manifests claim (CSIDriver fields, seccompProfile) and the newest
# schema kubernetes-validate ships; every object must be valid for both.
KUBERNETES_VERSIONS = ("1.29", "latest")


def renderer() -> list[str] | None:
    """The command that renders a kustomization directory given as its last argument."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def kustomizations() -> list[Path]:
    """Every directory under deploy/ (and e2e/cluster/) with a kustomization.yaml."""
    found = [*DEPLOY.rglob("kustomization.yaml"), *(ROOT / "e2e" / "cluster").rglob(
        "kustomization.yaml")]
    return sorted(p.parent for p in found)


def label(directory: Path) -> str:
    """A kustomization's test id: its path from the repository root."""
    return str(directory.relative_to(ROOT))


def render(directory: Path) -> list[dict]:
    """The objects `directory` renders to (a fresh copy each call: tests may change them)."""
    return copy.deepcopy(_render(Path(directory)))


@functools.cache
def _render(directory: Path) -> list[dict]:
    command = renderer()
    if command is None:
        raise RuntimeError("neither kubectl nor kustomize is installed")
    proc = subprocess.run([*command, str(directory)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} {directory} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def load_yaml(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def validate(obj: dict) -> list[str]:
    """Schema errors of `obj` for every version in KUBERNETES_VERSIONS (empty if valid)."""
    import kubernetes_validate

    problems = []
    for version in KUBERNETES_VERSIONS:
        wanted = kubernetes_validate.latest_version() if version == "latest" else version
        try:
            kubernetes_validate.validate(obj, wanted, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{describe(obj)} (Kubernetes {wanted}): {e.message} at "
                            f"{'/'.join(str(p) for p in e.path)}")
    return problems


def describe(obj: dict) -> str:
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    """The one object of `kind` (and `name`, matched as a prefix for generated names)."""
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"].startswith(name))]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(workload: dict, name: str) -> dict:
    for c in workload["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"{describe(workload)} has no container {name!r}")

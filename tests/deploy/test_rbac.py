"""RBAC in deploy/base covers every Kubernetes API call eddy's code makes, and no more goes
to the node plugin.

The calls are found in the source (any `x.method(...)` whose name is a method of a
kubernetes.client `*Api` class); each method's HTTP verb and resource path are read from the
generated client itself, so the test knows that `read_namespaced_persistent_volume_claim` is
`get persistentvolumeclaims` without a table kept by hand.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import kubernetes.client
import pytest

from tests.support.kustomize import DEPLOY, ROOT, render, renderer

pytestmark = pytest.mark.skipif(renderer() is None,
                                reason="needs kubectl (or kustomize) to render deploy/")
PACKAGES = ("eddy", "csi", "cache_engine")
# Modules whose namespaced calls stay in the controller's own namespace (--state-namespace
# defaults to it); any other namespaced call may go to any namespace and needs a ClusterRole.
OWN_NAMESPACE = {"csi/kube/volume_store.py"}
CONTROLLER = ("eddy", "eddy-controller")
NODE = ("eddy", "eddy-node")
HTTP_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


API_DIR = Path(kubernetes.client.__file__).parent / "api"


@functools.cache
def api_methods() -> dict[str, str]:
    """API operation name (`read_namespaced_config_map`, ...) -> the generated module's source.

    Read as text from kubernetes/client/api/*.py: importing all 60-odd API classes is slow.
    """
    methods = {}
    for path in sorted(API_DIR.glob("*_api.py")):
        source = path.read_text()
        for method in re.findall(r"def ([a-z]\w*)_with_http_info\(", source):
            methods.setdefault(method, source)
    return methods


@functools.cache
def api_calls() -> list[tuple[str, str]]:
    """(module path, method) of every Kubernetes API call in eddy's packages."""
    methods = api_methods()
    calls = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in methods:
                    calls.append((str(path.relative_to(ROOT)), node.func.attr))
    return calls


def permission(method: str, source: str) -> tuple[str, str, str, bool]:
    """(api group, resource, verb, namespaced) that `method`, defined in `source`, needs."""
    found = re.search(rf"def _{method}_serialize\(.*?method='(\w+)',\s*resource_path='([^']+)'",
                      source, re.S) or \
        re.search(rf"def {method}_with_http_info\(.*?'(/api[^']+)', '(\w+)'", source, re.S)
    assert found, f"cannot find the HTTP request of {method}"
    http, path = found.groups()
    if http.startswith("/"):
        http, path = path, http
    return _permission(http, path)


def _permission(http: str, path: str) -> tuple[str, str, str, bool]:
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    namespaced = rest[:1] == ["namespaces"] and len(rest) > 2
    if namespaced:
        rest = rest[2:]
    named = len(rest) >= 2
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    if http == "GET":
        verb = "get" if named else "list"
    elif http == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = HTTP_VERBS[http]
    return group, resource, verb, namespaced


def rules_bound_to(objects: list[dict], account: tuple[str, str]) -> dict[str, list[dict]]:
    """{"cluster": rules of bound ClusterRoles, "<namespace>": rules of bound Roles there}."""
    namespace, name = account
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    bound: dict[str, list[dict]] = {}
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == name
                   and s.get("namespace") == namespace for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], scope, ref["name"])]
        key = "cluster" if binding["kind"] == "ClusterRoleBinding" else \
            binding["metadata"]["namespace"]
        bound.setdefault(key, []).extend(role["rules"])
    return bound


def allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", [])
               and (verb in r.get("verbs", []) or "*" in r.get("verbs", [])) for r in rules)


def test_the_scan_finds_the_calls_we_know_of():
    calls = set(api_calls())
    assert ("csi/kube/pvc.py", "read_namespaced_persistent_volume_claim") in calls
    assert ("csi/kube/pvc.py", "read_persistent_volume") in calls
    assert ("csi/kube/volume_store.py", "create_namespaced_config_map") in calls
    methods = api_methods()
    assert permission("read_namespaced_persistent_volume_claim", methods[
        "read_namespaced_persistent_volume_claim"]) == ("", "persistentvolumeclaims", "get", True)
    assert permission("list_namespaced_config_map", methods["list_namespaced_config_map"]) == \
        ("", "configmaps", "list", True)


def missing_permissions(objects: list[dict]) -> list[str]:
    """Every API call of eddy's code that the controller's RBAC in `objects` does not allow."""
    bound = rules_bound_to(objects, CONTROLLER)
    missing = []
    for module, method in api_calls():
        group, resource, verb, namespaced = permission(method, api_methods()[method])
        rules = bound.get("cluster", [])
        if namespaced and module in OWN_NAMESPACE:
            rules = rules + bound.get(CONTROLLER[0], [])
        if not allows(rules, group, resource, verb):
            missing.append(f"{module}: {method} needs {verb} {resource} (group {group!r})"
                           f"{' in any namespace' if namespaced else ''}")
    return missing


def test_controller_rbac_covers_every_api_call():
    missing = missing_permissions(render(DEPLOY / "base"))
    assert not missing, "\n".join(missing)


def test_a_missing_rule_is_noticed():
    objects = render(DEPLOY / "base")
    role = next(o for o in objects if o["kind"] == "Role")
    role["rules"] = [r for r in role["rules"] if "configmaps" not in r["resources"]]
    assert any("configmaps" in m for m in missing_permissions(objects))


def test_node_plugin_has_no_api_access_and_its_code_makes_no_calls():
    objects = render(DEPLOY / "base")
    assert rules_bound_to(objects, NODE) == {}
    calling = {module for module, _ in api_calls()}
    reachable = modules_imported_by(ROOT / "csi" / "node.py")
    assert not calling & reachable, f"the node service reaches API calls in {calling & reachable}"


def modules_imported_by(start: Path) -> set[str]:
    """Module paths (relative to the repository) that `start` imports, transitively."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        rel = str(path.relative_to(ROOT))
        if rel in seen:
            continue
        seen.add(rel)
        todo.extend(_local_imports(path))
    return seen


def _local_imports(path: Path) -> list[Path]:
    package = path.parent
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = package if node.level else ROOT
            for _ in range(max(node.level - 1, 0)):
                base = base.parent
            module = (node.module or "").replace(".", "/")
            names = [f"{module}/{a.name}" if module else a.name for a in node.names] + [module]
        elif isinstance(node, ast.Import):
            base, names = ROOT, [a.name.replace(".", "/") for a in node.names]
        else:
            continue
        for name in names:
            for candidate in (base / f"{name}.py", base / name / "__init__.py"):
                if name and candidate.is_file() and candidate.is_relative_to(ROOT) \
                        and ".venv" not in candidate.parts:
                    found.append(candidate)
    return found

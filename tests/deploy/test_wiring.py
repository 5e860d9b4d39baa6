"""The deploy files agree with the code: driver name, socket paths, flags, kubelet paths.

Checked on every rendered kustomization that contains the driver (base and each overlay), so
an overlay that moves the kubelet directory or the tiers cannot leave one place behind.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import pytest
import yaml

from cache_engine.tiers import parse_tiers
from csi.ephemeral import EphemeralPolicy
from csi.server import socket_path
from eddy.cli import _parser
from tests.support.kustomize import (
    DEPLOY,
    container,
    find,
    kustomizations,
    label,
    render,
    renderer,
)

pytestmark = pytest.mark.skipif(renderer() is None,
                                reason="needs kubectl (or kustomize) to render deploy/")
DRIVER_INSTALLS = [p for p in kustomizations() if "examples" not in p.parts]
SIDECAR_IMAGE = re.compile(r"^registry\.k8s\.io/sig-storage/[a-z-]+:v\d+\.\d+\.\d+$")


def installs():
    return pytest.mark.parametrize("directory", DRIVER_INSTALLS, ids=label)


def serve_defaults():
    return _parser().parse_args(["serve"])


def flag_value(args: list[str], flag: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} appears {len(values)} times in {args}"
    return values[0]


def expand(c: dict, objects: list[dict]) -> list[str]:
    """The container's args as the kubelet runs them: $(VAR) replaced from its env."""
    env = {}
    for var in c.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "fieldRef" in source:
            env[var["name"]] = f"field-{source['fieldRef']['fieldPath'].replace('.', '-')}"
    unknown = re.findall(r"\$\((\w+)\)", " ".join(c.get("args", [])))
    assert set(unknown) <= set(env), f"{c['name']}: undefined variables {set(unknown) - set(env)}"
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c.get("args", [])]


def mount_of(c: dict, path: str) -> dict:
    """The volume mount of container `c` under which `path` lies (the deepest one)."""
    mounts = [m for m in c["volumeMounts"]
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{c['name']}: {path} is on no volume"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def host_path(workload: dict, c: dict, path: str) -> str:
    """Where `path` inside container `c` lives on the host (via hostPath volume + subPath)."""
    mount = mount_of(c, path)
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mount["name"]]
    assert "hostPath" in volume, f"{c['name']}: {path} is not on a hostPath volume"
    base = volume["hostPath"]["path"]
    if mount.get("subPath"):
        base = f"{base}/{mount['subPath']}"
    return base + path[len(mount["mountPath"].rstrip("/")):]


WORKLOADS = {"Deployment": "eddy-controller", "DaemonSet": "eddy-node"}  # eddy serve's


def eddy_args(objects: list[dict], kind: str) -> list[str]:
    workload = find(objects, kind, WORKLOADS[kind])
    c = container(workload, "eddy")
    assert c["command"] == ["eddy", "serve"]
    return expand(c, objects)


# -- every flag exists and parses -------------------------------------------------------------

@functools.cache
def serve_help() -> str:
    return subprocess.run([sys.executable, "-m", "eddy.cli", "serve", "--help"],
                          capture_output=True, text=True, check=True).stdout


@installs()
@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_eddy_flags_exist_and_parse(directory, kind):
    args = eddy_args(render(directory), kind)
    help_text = serve_help()
    for arg in args:
        flag = arg.split("=", 1)[0]
        assert flag.startswith("--") and re.search(rf"{flag}\b", help_text), \
            f"{flag} is not in `eddy serve --help`"
    parsed = _parser().parse_args(["serve", *args])  # SystemExit on a bad value
    assert parsed.mode == {"Deployment": "controller", "DaemonSet": "node"}[kind]


@installs()
def test_node_tiers_and_ephemeral_policy_parse_and_live_on_host_paths(directory):
    objects = render(directory)
    parsed = _parser().parse_args(["serve", *eddy_args(objects, "DaemonSet")])
    tiers = parse_tiers(parsed.tier)
    assert [t.name for t in tiers] == ["MEM", "SSD"]
    node = find(objects, "DaemonSet", "eddy-node")
    eddy = container(node, "eddy")
    hosts = {tier.name: host_path(node, eddy, tier.path) for tier in tiers}
    assert hosts["MEM"].startswith("/dev/shm/"), "the MEM tier must be on the host's tmpfs"
    assert len(set(hosts.values())) == len(hosts)
    assert host_path(node, eddy, "/var/lib/eddy/x").startswith("/var/lib/eddy/")
    policy = EphemeralPolicy.from_flags(parsed.ephemeral_allow, parsed.ephemeral_endpoint,
                                        parsed.ephemeral_tiers)
    assert not any(s.scheme == "local" for s in policy.sources), "local:// allowed by default"


# -- driver name and sockets ------------------------------------------------------------------

@installs()
def test_driver_name_is_the_same_everywhere(directory):
    objects = render(directory)
    name = serve_defaults().driver_name
    assert find(objects, "CSIDriver")["metadata"]["name"] == name
    for kind in ("Deployment", "DaemonSet"):
        assert flag_value(eddy_args(objects, kind), "--driver-name") == name
    csidriver = find(objects, "CSIDriver")["spec"]
    assert csidriver["attachRequired"] is False and csidriver["podInfoOnMount"] is True
    assert set(csidriver["volumeLifecycleModes"]) == {"Persistent", "Ephemeral"}
    assert csidriver["fsGroupPolicy"] == "None"


@installs()
def test_node_sockets_agree_between_eddy_sidecars_and_kubelet(directory):
    objects = render(directory)
    node = find(objects, "DaemonSet", "eddy-node")
    eddy, registrar, probe = (container(node, n) for n in
                              ("eddy", "node-driver-registrar", "liveness-probe"))
    name = serve_defaults().driver_name
    eddy_socket = host_path(node, eddy, socket_path(flag_value(expand(eddy, objects),
                                                               "--endpoint")))
    registrar_args = expand(registrar, objects)
    for c, args in ((registrar, registrar_args), (probe, expand(probe, objects))):
        assert host_path(node, c, flag_value(args, "--csi-address")) == eddy_socket
    registration = flag_value(registrar_args, "--kubelet-registration-path")
    kubelet_dir = host_path(node, eddy, mount_of(eddy, "/csi")["mountPath"])
    assert registration == eddy_socket == f"{kubelet_dir}/csi.sock"
    kubelet_root = [m for m in eddy["volumeMounts"] if m.get("mountPropagation")][0]
    assert kubelet_root["mountPropagation"] == "Bidirectional"
    # kubelet hands the plugin host paths: the kubelet root must be mounted at its host path
    assert host_path(node, eddy, kubelet_root["mountPath"]) == kubelet_root["mountPath"]
    assert registration == f"{kubelet_root['mountPath']}/plugins/{name}/csi.sock"
    assert host_path(node, registrar, "/registration") == \
        f"{kubelet_root['mountPath']}/plugins_registry"
    # ... and the plugin refuses staging and target paths outside it
    plugin = _parser().parse_args(["serve", *expand(eddy, objects)])
    assert plugin.kubelet_dir == kubelet_root["mountPath"]


@installs()
def test_controller_socket_is_shared_with_its_sidecars(directory):
    objects = render(directory)
    controller = find(objects, "Deployment", "eddy-controller")
    eddy = container(controller, "eddy")
    endpoint = socket_path(flag_value(expand(eddy, objects), "--endpoint"))
    socket_volume = mount_of(eddy, endpoint)["name"]
    for name in ("csi-provisioner", "liveness-probe"):
        c = container(controller, name)
        address = flag_value(c["args"], "--csi-address")
        assert address == endpoint and mount_of(c, address)["name"] == socket_volume
    assert "--leader-election" in container(controller, "csi-provisioner")["args"]
    assert flag_value(eddy_args(objects, "Deployment"), "--state-store") == "kubernetes"


@installs()
def test_liveness_probes_ask_the_livenessprobe_sidecar(directory):
    objects = render(directory)
    for kind in ("Deployment", "DaemonSet"):
        workload = find(objects, kind, WORKLOADS[kind])
        eddy = container(workload, "eddy")
        ports = {p["name"]: p["containerPort"] for p in eddy["ports"]}
        probe_port = int(flag_value(container(workload, "liveness-probe")["args"],
                                    "--health-port"))
        assert ports[eddy["livenessProbe"]["httpGet"]["port"]] == probe_port


@installs()
def test_eddy_status_in_the_plugin_container_reaches_its_engine_socket(directory):
    """`kubectl exec ... eddy status` with no flags talks to the plugin's engine socket."""
    objects = render(directory)
    plugin = _parser().parse_args(["serve", *eddy_args(objects, "DaemonSet")])
    engine = socket_path(plugin.engine_endpoint or f"unix://{plugin.state_dir}/engine.sock")
    assert socket_path(_parser().parse_args(["status"]).endpoint) == engine


@installs()
def test_every_local_source_directory_is_mounted_where_the_daemons_read_it(directory):
    """--local-allow names host directories; the node plugin and the mounter (whose daemons
    read local sources) both see each one at its host path, and the examples' local and
    hostPath sources lie in one of them."""
    objects = render(directory)
    node, mounter = (find(objects, "DaemonSet", n) for n in ("eddy-node", "eddy-mounter"))
    plugin = _parser().parse_args(["serve", *eddy_args(objects, "DaemonSet")])
    assert plugin.local_allow, "a cluster node must say where local sources may be"
    for allowed in plugin.local_allow:
        for workload in (node, mounter):
            assert host_path(workload, container(workload, "eddy"), allowed) == allowed
    with open(DEPLOY / "examples" / "storageclass-local.yaml") as f:
        [local_class] = yaml.safe_load_all(f)
    pvs = [o for o in render(DEPLOY / "examples" / "seed" / "store")
           if o["kind"] == "PersistentVolume"]
    paths = [local_class["parameters"]["source"].removeprefix("local://"),
             *(pv["spec"]["hostPath"]["path"] for pv in pvs)]
    for path in paths:
        assert any(path.startswith(d.rstrip("/") + "/") for d in plugin.local_allow), path


@installs()
def test_the_mounter_shares_socket_kubelet_dir_tiers_and_engine_with_the_node_plugin(directory):
    """The mounter DaemonSet is never rolled by an image change, mounts where kubelet and the
    node plugin look, and its daemons reach the plugin's engine socket and tier files."""
    objects = render(directory)
    node, mounter = (find(objects, "DaemonSet", n) for n in ("eddy-node", "eddy-mounter"))
    eddy, mounter_eddy = container(node, "eddy"), container(mounter, "eddy")
    assert mounter["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert mounter_eddy["command"] == ["eddy", "mounter"]
    assert mounter_eddy["securityContext"]["privileged"] is True
    mounter_args = expand(mounter_eddy, objects)
    parsed = _parser().parse_args(["mounter", *mounter_args])  # SystemExit on a bad flag
    plugin = _parser().parse_args(["serve", *eddy_args(objects, "DaemonSet")])
    assert host_path(node, eddy, socket_path(plugin.mounter)) == \
        host_path(mounter, mounter_eddy, socket_path(parsed.endpoint))
    kubelet = [m for m in eddy["volumeMounts"] if m["name"] == "kubelet-dir" and
               m.get("mountPropagation") == "Bidirectional"][0]["mountPath"]
    mount = mount_of(mounter_eddy, kubelet)
    assert mount["mountPath"] == kubelet == host_path(mounter, mounter_eddy, kubelet)
    assert mount["mountPropagation"] == "Bidirectional"  # its FUSE mounts reach the host
    assert host_path(mounter, mounter_eddy, "/dev/fuse") == "/dev/fuse"
    engine = f"{plugin.state_dir}/engine.sock"  # the daemons' engine endpoint
    for path in [engine, *(t.path for t in parse_tiers(plugin.tier))]:
        assert host_path(mounter, mounter_eddy, path) == host_path(node, eddy, path), path
    # The NFS exports the plugin mounts in its state dir reach the mounter's daemons.
    assert mount_of(eddy, plugin.state_dir)["mountPropagation"] == "Bidirectional"
    assert mount_of(mounter_eddy, plugin.state_dir)["mountPropagation"] in (
        "HostToContainer", "Bidirectional")
    assert host_path(mounter, mounter_eddy, parsed.state_dir).startswith("/var/lib/eddy/")
    # Node-stage secrets live on the host's tmpfs /run, in both processes.
    for workload, c, args in ((node, eddy, plugin), (mounter, mounter_eddy, parsed)):
        assert host_path(workload, c, args.secrets_dir).startswith("/run/"), args.secrets_dir


# -- privilege, priority, images --------------------------------------------------------------

def test_node_is_privileged_and_controller_is_not():
    objects = render(DEPLOY / "base")
    node = find(objects, "DaemonSet", "eddy-node")["spec"]["template"]["spec"]
    controller = find(objects, "Deployment", "eddy-controller")["spec"]["template"]["spec"]
    assert container({"spec": {"template": {"spec": node}}}, "eddy")["securityContext"][
        "privileged"] is True
    assert node["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in node["tolerations"]
    assert node["automountServiceAccountToken"] is False
    assert controller["priorityClassName"] == "system-cluster-critical"
    assert controller["securityContext"]["runAsNonRoot"] is True
    for c in controller["containers"]:
        assert not c.get("securityContext", {}).get("privileged")
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


@installs()
def test_sidecar_images_are_pinned(directory):
    for obj in render(directory):
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            if c["name"] != "eddy":
                assert SIDECAR_IMAGE.match(c["image"]), c["image"]


def test_overlays_change_what_they_say():
    kubelet = render(DEPLOY / "overlays" / "kubelet-dir")
    node = find(kubelet, "DaemonSet", "eddy-node")
    assert flag_value(expand(container(node, "node-driver-registrar"), kubelet),
                      "--kubelet-registration-path").startswith("/var/lib/k0s/kubelet/")
    mounter = find(kubelet, "DaemonSet", "eddy-mounter")
    assert host_path(mounter, container(mounter, "eddy"), "/var/lib/k0s/kubelet/x") == \
        "/var/lib/k0s/kubelet/x"
    tiers = _parser().parse_args(["serve", *eddy_args(render(DEPLOY / "overlays" / "tiers"),
                                                      "DaemonSet")]).tier
    assert [t.split(":")[2] for t in tiers] == ["20Gi", "200Gi"]
    for arch in ("arm64", "amd64"):
        for obj in render(DEPLOY / "overlays" / arch):
            if obj["kind"] in ("Deployment", "DaemonSet"):
                assert obj["spec"]["template"]["spec"]["nodeSelector"][
                    "kubernetes.io/arch"] == arch

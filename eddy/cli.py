"""The `eddy` command: serve the CSI driver, or mount a dataset without Kubernetes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading

import yaml

from eddy import __version__
from eddy.base import log
from eddy.base.errors import EddyError

AWS_ENV = {"AWS_ACCESS_KEY_ID": "accessKeyId", "AWS_SECRET_ACCESS_KEY": "secretAccessKey",
           "AWS_SESSION_TOKEN": "sessionToken"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eddy", description=__doc__)
    p.add_argument("--version", action="version", version=f"eddy {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the CSI driver (node plugin, controller, or both)")
    s.add_argument("--mode", choices=["all", "controller", "node"], default="all")
    s.add_argument("--endpoint", default="unix:///csi/csi.sock",
                   help="CSI socket, unix:///path (default: %(default)s); it is made 0600")
    s.add_argument("--kubelet-dir", default="/var/lib/kubelet", metavar="DIR",
                   help="kubelet's root: every staging and target path must be beneath it "
                        "(default: %(default)s)")
    s.add_argument("--local-allow", action="append", default=[], metavar="DIR",
                   help="a host directory local:// sources (and hostPath pvc:// ones) may be "
                        "in; repeatable (default: any directory)")
    s.add_argument("--socket-group", default="", metavar="GROUP",
                   help="make the CSI socket 0660 for this group, for sidecars that run as it")
    s.add_argument("--node-id", default=socket.gethostname(),
                   help="this node's id, usually the Kubernetes node name (default: hostname)")
    s.add_argument("--state-dir", default="/var/lib/eddy",
                   help="where volume records live (default: %(default)s)")
    s.add_argument("--driver-name", default="eddy.csi.io")
    s.add_argument("--max-volumes", type=int, default=0,
                   help="volumes this node may stage at once, 0 for no limit")
    _tier_argument(s, "STATE-DIR/cache, 10Gi")
    s.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus metrics on this port (default: off)")
    s.add_argument("--metrics-address", default="0.0.0.0",
                   help="address for --metrics-port (default: %(default)s)")
    s.add_argument("--engine-endpoint", default="",
                   help="the cache engine's socket for mount daemons and the CLI "
                        "(default: unix://STATE-DIR/engine.sock)")
    s.add_argument("--state-store", choices=["sqlite", "kubernetes"], default="sqlite",
                   help="where the controller keeps volume records: SQLite in STATE-DIR, or "
                        "one ConfigMap per volume (several replicas) (default: %(default)s)")
    s.add_argument("--state-namespace", default="",
                   help="namespace of the kubernetes state store (default: the pod's own)")
    s.add_argument("--ephemeral-allow", action="append", default=[], metavar="SOURCE[,SOURCE]",
                   help="source prefixes inline ephemeral volumes may read, e.g. "
                        "s3://bucket/prefix; repeatable (default: none, inline volumes refused)")
    s.add_argument("--ephemeral-endpoint", action="append", default=[], metavar="URL[,URL]",
                   help="S3 endpoints inline ephemeral volumes may name; repeatable")
    s.add_argument("--ephemeral-tiers", action="append", default=[], metavar="NAME[,NAME]",
                   help="node tiers inline ephemeral volumes may use (default: all)")
    s.add_argument("--ephemeral-allow-write", action="append", default=[],
                   metavar="SOURCE[,SOURCE]",
                   help="source prefixes inline ephemeral volumes may also write (each under an "
                        "--ephemeral-allow entry); default: none, inline volumes are read-only")
    s.add_argument("--ephemeral-allow-private", action="store_true",
                   help="let inline ephemeral volumes reach loopback, link-local and private "
                        "addresses (default: refused at NodePublishVolume)")
    _redirect_argument(s)
    s.add_argument("--mounter", default="", metavar="unix:///PATH",
                   help="the socket of `eddy mounter`, which mounts the volumes and keeps their "
                        "daemons (default: run the mounter in this process)")
    _secrets_dir_argument(s)

    mt = sub.add_parser("mounter", help="mount the node's volumes and keep their daemons "
                        "serving (for `eddy serve --mounter`)")
    mt.add_argument("--endpoint", default="unix:///var/lib/eddy/mounter/mounter.sock",
                    help="the socket to serve, unix:///path (default: %(default)s)")
    mt.add_argument("--state-dir", default="/var/lib/eddy/mounter",
                    help="where the mounts' records and sessions live (default: %(default)s)")
    _secrets_dir_argument(mt)

    m = sub.add_parser("mount", help="mount a dataset at a directory, without Kubernetes")
    m.add_argument("source", help="s3://bucket/prefix, local:///abs/dir, ...")
    m.add_argument("mountpoint")
    m.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a volume parameter (endpoint, region, metadataTTL, ...); repeatable")
    m.add_argument("--secrets-file", help="YAML/JSON with accessKeyId, secretAccessKey "
                   "[, sessionToken]; default: the AWS_* environment variables")
    m.add_argument("--foreground", action="store_true", help="stay attached until unmounted")
    m.add_argument("--log-dir", default="/var/log/eddy",
                   help="where a detached mount writes its log (default: %(default)s)")
    m.add_argument("--state-dir", default="/var/cache/eddy",
                   help="the mount's cache engine state (block index); one mount at a time "
                        "may use it, and a later mount of the same dataset finds its blocks "
                        "warm (default: %(default)s)")
    _tier_argument(m, "STATE-DIR/cache, 10Gi")
    _redirect_argument(m)

    u = sub.add_parser("umount", help="unmount what `eddy mount` mounted")
    u.add_argument("mountpoint")

    pl = sub.add_parser("preload", help="load a dataset (or paths in it) into the cache")
    pl.add_argument("paths", nargs="*", metavar="PATH",
                    help="files, directories or name prefixes in the dataset (default: all)")
    _engine_arguments(pl)
    pl.add_argument("--volume-id", help="which volume, when the node plugin has several")
    pl.add_argument("--workers", type=int, default=0,
                    help="parallel source reads (default: the engine's, 8)")
    pl.add_argument("--wait", action="store_true",
                    help="follow the job to its end; exit non-zero unless it completes")
    pl.add_argument("--cancel", action="store_true", help="cancel the running job")
    pl.add_argument("--json", action="store_true", help="JSON lines instead of a progress bar")

    st = sub.add_parser("status", help="one row per dataset cached on this node")
    _engine_arguments(st)
    st.add_argument("--json", action="store_true")
    st.add_argument("--wide", action="store_true", help="add bytes per tier, source, dataset")
    st.add_argument("--wait", type=float, default=2.0, metavar="SECONDS",
                    help="wait this long for source sizes being calculated (default: 2)")
    return p


def _engine_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--endpoint", default="unix:///var/lib/eddy/engine.sock",
                       help="the node plugin's engine socket: engine.sock in its --state-dir, "
                            "or its --engine-endpoint (default: %(default)s)")
    where.add_argument("--mountpoint", help="a directory mounted by `eddy mount`")


def _tier_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--tier", action="append", default=[], metavar="NAME:PATH:SIZE[:HIGH:LOW]",
                   help="a cache tier, fastest first, e.g. MEM:/dev/shm/eddy:4Gi; repeatable "
                        f"(default: one SSD tier in {default})")
    p.add_argument("--extent-trust", type=float, default=3600.0, metavar="SECONDS",
                   help="how long a check of a whole file on a disk tier lets the kernel read it "
                        "unchecked (FUSE passthrough); the scrubber checks each again at half "
                        "that age; 0: every read of a disk tier checked (default: %(default)s)")
    p.add_argument("--scrub-rate", default="64Mi", metavar="BYTES",
                   help="bytes a second the scrubber reads at most (default: %(default)s)")


def _scrub(args) -> dict:
    """--extent-trust and --scrub-rate, checked: the keyword arguments of `ScrubPolicy`."""
    from dataclasses import asdict

    from cache_engine.host import ScrubPolicy
    from cache_engine.quantity import parse_quantity

    try:
        return asdict(ScrubPolicy(args.extent_trust, parse_quantity(args.scrub_rate)))
    except ValueError as e:
        raise EddyError(f"--extent-trust {args.extent_trust} --scrub-rate {args.scrub_rate}: "
                        f"{e}") from None


def _redirect_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http-redirect-allow", action="append", default=[], metavar="ORIGIN",
                   help="an origin (https://host[:port]) http(s) sources may be redirected to, "
                        "or '*' for any with public addresses; repeatable (default: a source "
                        "is redirected within its own origin only)")


def _secrets_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secrets-dir", default="/run/eddy/secrets", metavar="DIR",
                   help="where node-stage secrets are kept while their volume is staged; it "
                        "must be on tmpfs, or eddy mounts one there (default: %(default)s)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure(args.log_level)
    try:
        return {"serve": _serve, "mounter": _mounter, "mount": _mount, "umount": _umount,
                "preload": _preload, "status": _status}[args.command](args)
    except EddyError as e:
        print(f"eddy {args.command}: {e}", file=sys.stderr)
        return 1


def _serve(args) -> int:
    from csi.server import Driver, DriverConfig

    driver = Driver(DriverConfig(
        mode=args.mode, endpoint=args.endpoint, node_id=args.node_id, state_dir=args.state_dir,
        driver_name=args.driver_name, max_volumes=args.max_volumes, log_level=args.log_level,
        tiers=args.tier, engine_endpoint=args.engine_endpoint, metrics_port=args.metrics_port,
        metrics_address=args.metrics_address, state_store=args.state_store,
        state_namespace=args.state_namespace, ephemeral_allow=args.ephemeral_allow,
        ephemeral_endpoints=args.ephemeral_endpoint, ephemeral_tiers=args.ephemeral_tiers,
        ephemeral_private=args.ephemeral_allow_private, ephemeral_write=args.ephemeral_allow_write,
        http_redirect_allow=args.http_redirect_allow, mounter=args.mounter,
        socket_group=args.socket_group, secrets_dir=args.secrets_dir,
        kubelet_dir=args.kubelet_dir, local_allow=args.local_allow, scrub=_scrub(args)))
    stopping = _stop_signals()
    driver.start()
    stopping.wait()
    driver.stop()
    return 0


def _mounter(args) -> int:
    from csi.mounter.mounter import Mounter
    from csi.mounter.service import MounterServer

    mounter = Mounter(args.state_dir, secrets_dir=args.secrets_dir)
    server = MounterServer(mounter, args.endpoint)
    stopping = _stop_signals()
    mounter.start()
    server.start()
    stopping.wait()
    server.stop()
    mounter.close()  # the daemons keep serving; a new mounter takes them over
    return 0


def _stop_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopping


def _secrets(path: str | None) -> dict[str, str]:
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise EddyError(f"{path}: expected a mapping of accessKeyId/secretAccessKey")
        return {str(k): str(v) for k, v in data.items()}
    return {key: os.environ[env] for env, key in AWS_ENV.items() if os.environ.get(env)}


def _mount(args) -> int:
    from cache_engine.host import default_tiers
    from cache_engine.spec import parse_parameters, parse_secrets
    from cache_engine.tiers import parse_tiers
    from cache_engine.ufs import RedirectPolicy
    from csi import daemons
    from eddy import cache_cli

    params = {"source": args.source}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise EddyError(f"--param {item!r}: expected KEY=VALUE")
        params[key] = value
    spec = parse_parameters(params)
    secrets = parse_secrets(_secrets(args.secrets_file))
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise EddyError(f"mountpoint {mountpoint} is not a directory")
    volume_id = cache_cli.mount_volume_id(mountpoint)
    state_dir = os.path.abspath(args.state_dir)
    tiers = args.tier or default_tiers(state_dir)
    parse_tiers(tiers)  # a bad --tier is reported here, not by the detached daemon
    engine = {"tiers": tiers, "state_dir": state_dir,
              "socket": cache_cli.mount_socket(mountpoint),  # for `eddy status`/`preload`
              "redirect_allow": RedirectPolicy.from_flags(args.http_redirect_allow).flags(),
              "scrub": _scrub(args)}
    if args.foreground:
        from csi.fuse.daemon import run

        run(mountpoint, volume_id, spec.to_parameters(), secrets,
            ready_callback=lambda: print(f"mounted {spec.source.shown} at {mountpoint}",
                                         flush=True), engine=engine)
        return 0
    log_path = os.path.join(args.log_dir, f"{volume_id}.log")
    daemon = daemons.start(daemons.DaemonConfig(volume_id, mountpoint, spec.to_parameters(),
                                                secrets, args.log_level, log_path,
                                                engine=engine))
    print(json.dumps({"mounted": spec.source.shown, "mountpoint": mountpoint, "pid": daemon.pid,
                      "log": log_path, "state_dir": state_dir}))
    return 0


def _preload(args) -> int:
    from eddy import cache_cli

    return cache_cli.preload(args)


def _status(args) -> int:
    from eddy import cache_cli

    return cache_cli.status(args)


def _umount(args) -> int:
    from csi import mounts

    mountpoint = os.path.abspath(args.mountpoint)
    if not mounts.is_mount_point(mountpoint):
        raise EddyError(f"{mountpoint} is not mounted")
    mounts.unmount_all(mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())

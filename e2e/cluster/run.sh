#!/usr/bin/env bash
# eddy end to end on a throwaway kind cluster: build the image, load it into the cluster,
# apply deploy/ (e2e/cluster/overlay), run the seed scenario (deploy/examples/seed), then check
# that the pod reads the model's exact bytes and that `eddy status` reports it fully cached.
#
# NEEDS Docker (a running daemon), kind and kubectl, and network access to pull the
# python:3.11-slim, busybox and registry.k8s.io sidecar images. It CANNOT run in this
# project's CI, which has no Docker daemon and no network beyond package registries; run it
# on a workstation:   e2e/cluster/run.sh            (KEEP=1 keeps the cluster afterwards)
set -euo pipefail

CLUSTER=${CLUSTER:-eddy-e2e}
IMAGE=eddy:e2e                      # the tag e2e/cluster/overlay deploys
KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

say() { printf '\n== %s\n' "$*"; }
fail() { echo "e2e/cluster: FAILED: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || { echo "e2e/cluster: needs $1" >&2; exit 2; }; }

need docker; need kind; need kubectl; need python3
docker info >/dev/null 2>&1 || { echo "e2e/cluster: no Docker daemon answers" >&2; exit 2; }

cleanup() {
  if [ "$KEEP" != 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --config "$ROOT/e2e/cluster/kind.yaml" --wait 180s

say "image $IMAGE"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

say "deploy eddy"
kubectl apply -k "$ROOT/e2e/cluster/overlay"
kubectl -n eddy rollout status daemonset/eddy-node --timeout=300s
kubectl -n eddy rollout status daemonset/eddy-mounter --timeout=300s
kubectl -n eddy rollout status deployment/eddy-controller --timeout=300s

say "seed, step 1: load the model into its claim"
kubectl apply -k "$ROOT/deploy/examples/seed/store"
kubectl -n models wait --for=condition=complete job/load-model --timeout=600s
want=$(kubectl -n models logs job/load-model | sed -n 's/^sha256 //p')
[ -n "$want" ] || fail "the load-model job printed no checksum"

say "seed, step 2: the eddy StorageClass, its claim and the Deployment"
kubectl apply -k "$ROOT/deploy/examples/seed/serve"
kubectl -n models wait --for=jsonpath='{.status.phase}'=Bound pvc/model --timeout=300s
kubectl -n models rollout status deployment/model-server --timeout=300s
pod=$(kubectl -n models get pod -l app=model-server -o jsonpath='{.items[0].metadata.name}')
node=$(kubectl -n models get pod "$pod" -o jsonpath='{.spec.nodeName}')
plugin=$(kubectl -n eddy get pod -l app.kubernetes.io/component=node \
  --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
eddy() { kubectl -n eddy exec "$plugin" -c eddy -- eddy "$@"; }

say "preload (started by the StorageClass's preload parameter; wait for it)"
eddy preload --wait --json | tail -n 1

say "copy times through eddy, after the preload (the seed compared these with the source's;
here the source is the kind node's own disk, so only the bytes and the status are checked)"
kubectl -n models exec "$pod" -- sh -c 'time cat /models/model.safetensors > /dev/null'
kubectl -n models exec "$pod" -- sh -c 'time cat /models/model.safetensors > /dev/null'

say "bytes"
got=$(kubectl -n models exec "$pod" -- sha256sum /models/model.safetensors | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "the pod read sha256 $got, the model is $want"
echo "sha256 $got: the pod reads the model's exact bytes"

say "cache status"
eddy status
eddy status --json | python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["ufs_total_bytes"]]
assert rows, "no dataset with a known size on the node"
row = max(rows, key=lambda r: r["ufs_total_bytes"])
name, percent, size = row["name"], row["cached_percentage"], row["ufs_total_bytes"]
phase = row["phase"]
assert percent == 100.0, f"{name}: cached {percent}%, not 100%"
assert row["tier_bytes"].get("MEM", 0) >= size, f"{name}: the model is not all in MEM"
print(f"{name}: {size} bytes, 100% cached in MEM, phase {phase}")
'
say "PASSED"

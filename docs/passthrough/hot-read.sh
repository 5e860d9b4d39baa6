#!/bin/bash
# Why a second read is slower than the first after drop_caches, through eddy and on tmpfs
# alike: `sudo docs/passthrough/hot-read.sh [WORKDIR]` (root: mounts, drop_caches; 3 GiB free
# on /dev/shm). A 1 GiB file is cached whole in a MEM tier on /dev/shm (cold read through
# `eddy mount`, unmounted); then three rounds of: a fresh mount, drop_caches, three reads
# through it (FUSE passthrough from the extent), and the same three reads of a copy of the
# file on tmpfs, with the pages the kernel moved to its active LRU list during each read
# (/proc/vmstat pgactivate).
set -euo pipefail
EDDY=${EDDY:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/eddy}
WORK=${1:-/tmp/eddy-hot-read}
SRC=$WORK/src MNT=$WORK/mnt STATE=$WORK/state MEM=/dev/shm/eddy-hot-read-mem
COPY=/dev/shm/eddy-hot-read-copy.bin
mkdir -p "$SRC" "$MNT"
trap 'umount -l "$MNT" 2>/dev/null || true; rm -rf "$MEM" "$COPY" "$WORK"' EXIT
head -c 1G /dev/urandom > "$SRC/big.bin"
cp "$SRC/big.bin" "$COPY"
mount_eddy() { "$EDDY" mount "local://$SRC" "$MNT" --tier "MEM:$MEM:2Gi" --state-dir "$STATE" \
                 --log-dir "$WORK" > /dev/null; }
activated() { awk '/^pgactivate /{print $2}' /proc/vmstat; }
read_once() {  # GB/s of one 1 MiB-read pass, and the pages activated meanwhile
  local before after speed
  before=$(activated)
  speed=$(dd if="$1" of=/dev/null bs=1M 2>&1 | tail -1 | awk '{print $(NF-1), $NF}')
  after=$(activated)
  printf '%-10s %7d activated' "$speed" $((after - before))
}
mount_eddy; cat "$MNT/big.bin" > /dev/null; "$EDDY" umount "$MNT" > /dev/null
for round in 1 2 3; do
  mount_eddy
  echo 3 > /proc/sys/vm/drop_caches
  for i in 1 2 3; do echo "round $round eddy  read $i: $(read_once "$MNT/big.bin")"; done
  "$EDDY" umount "$MNT" > /dev/null
  echo 3 > /proc/sys/vm/drop_caches
  for i in 1 2 3; do echo "round $round tmpfs read $i: $(read_once "$COPY")"; done
done

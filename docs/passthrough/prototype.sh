#!/usr/bin/env bash
# Rebuild the FUSE passthrough prototype of docs/passthrough.md and print its table.
#
#   sudo docs/passthrough/prototype.sh [WORKDIR]     (default: a new dir under /var/tmp)
#
# Builds libfuse 3.17.2 (Debian's source tarball) under WORKDIR/prefix and pyfuse3 3.5.0 with
# pyfuse3-3.5.0-passthrough.patch into a venv WORKDIR/venv, linked to that libfuse, then runs
# prototype.py. Needs root, /dev/fuse, a kernel with CONFIG_FUSE_PASSTHROUGH (6.9+), gcc,
# python3-venv and the Python headers. Nothing outside WORKDIR is changed; remove it after.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d /var/tmp/eddy-passthrough-XXXXXX)}"
mkdir -p "$work"
cd "$work"

fetch() {  # URL FILE SHA256
  [ -f "$2" ] || curl -fsSL -o "$2" "$1"
  echo "$3  $2" | sha256sum -c --quiet -
}
fetch https://deb.debian.org/debian/pool/main/f/fuse3/fuse3_3.17.2.orig.tar.gz fuse3.tar.gz \
  3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f
fetch https://files.pythonhosted.org/packages/b9/a9/ce2c0513e9611ee2ffeeb482a33d23a210326801d48866df30a989562d43/pyfuse3-3.5.0.tar.gz \
  pyfuse3.tar.gz 88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24

[ -x venv/bin/python ] || python3 -m venv venv
venv/bin/pip install -q meson ninja cython setuptools_scm 'setuptools>=78.1.1' wheel trio

rm -rf fuse-3.17.2 pyfuse3-3.5.0
tar xzf fuse3.tar.gz
(cd fuse-3.17.2 && PATH="$work/venv/bin:$PATH" meson setup build --prefix="$work/prefix" \
   --libdir=lib -Dutils=false -Dexamples=false -Dtests=false >/dev/null \
 && PATH="$work/venv/bin:$PATH" ninja -C build install >/dev/null)

tar xzf pyfuse3.tar.gz
(cd pyfuse3-3.5.0 && patch -s -p1 < "$here/pyfuse3-3.5.0-passthrough.patch" \
 && PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" LDFLAGS="-Wl,-rpath,$work/prefix/lib" \
    "$work/venv/bin/pip" install -q --no-build-isolation .)

venv/bin/python "$here/prototype.py" "$work"

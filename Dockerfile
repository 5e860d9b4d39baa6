# syntax=docker/dockerfile:1
# eddy's one image, for the node plugin and the controller, amd64 and arm64:
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/eddy:0.1.0 --push .
# (`make image PUSH=1 IMAGE=REGISTRY/eddy:0.1.0` does this.)
#
# Contents: python:3.11-slim, fuse3 (fusermount3), libfuse 3.17.2 in /opt/libfuse for the
# pyfuse3 that can do FUSE passthrough (scripts/build-pyfuse3.sh; stock pyfuse3 and Debian's
# libfuse3 when that build fails), nfs-common (mount.nfs, only for pvc:// sources on NFS
# PersistentVolumes) and the eddy package with its Python dependencies; no compiler, no source
# tree, no shell tools beyond the base image's.
#
# Privilege: the image runs as the unprivileged user 65532 by default, which is all the
# controller (`eddy serve --mode controller`) needs: it only serves a unix socket and calls
# the Kubernetes API. The node plugin (`--mode node`) must run as root in a privileged
# container (deploy/base/node.yaml sets both): it opens /dev/fuse, calls mount(2) for FUSE,
# bind and NFS mounts, and needs Bidirectional mount propagation into kubelet's directory.

FROM python:3.11-slim AS build
# pyfuse3 has no wheels: it is compiled against libfuse3 here, in the build stage only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev pkg-config patch \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY eddy ./eddy
COPY csi ./csi
COPY cache_engine ./cache_engine
RUN pip wheel --no-cache-dir --wheel-dir /wheels .
# Replaces the stock pyfuse3 wheel with the passthrough one, linked to /opt/libfuse (the runtime
# stage copies it to the same path); /opt/libfuse stays empty when the build falls back. The
# script and its patch are mounted for this step only, not copied.
RUN --mount=type=bind,source=scripts,target=/src/scripts \
    scripts/build-pyfuse3.sh python /opt/libfuse /wheels && mkdir -p /opt/libfuse

FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 nfs-common \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/libfuse /opt/libfuse
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["eddy"]
CMD ["--help"]

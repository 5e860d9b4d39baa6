# eddy: one CSI driver that caches remote datasets on every node.
# `make test` and `make demo` do their own setup on a fresh Debian/Ubuntu machine. Setup also
# builds a pyfuse3 that can do FUSE passthrough and resume a mount whose daemon died
# (scripts/build-pyfuse3.sh, 1-2 minutes; EDDY_FUSE_PASSTHROUGH=0 skips it, a failed build
# keeps stock pyfuse3).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/*.proto)

.PHONY: setup proto lint test e2e demo bench clean image

setup: $(STAMP)

PASSTHROUGH := scripts/build-pyfuse3.sh scripts/pyfuse3-3.5.0-eddy.patch
PYTHON_H     = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h

# pyfuse3 is compiled (gcc, Python.h): stock against Debian's libfuse3-dev, then the passthrough
# one against its own libfuse in .venv/opt/libfuse (`clean` removes it with the venv).
$(STAMP): pyproject.toml $(PASSTHROUGH)
	@command -v fusermount3 >/dev/null && [ -e /usr/include/fuse3/fuse.h ] && command -v pkg-config >/dev/null \
	  && command -v gcc >/dev/null && command -v patch >/dev/null && [ -e $(PYTHON_H) ] || { \
	  echo "installing fuse3, libfuse3-dev, pkg-config, gcc, patch, python3-dev"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev \
	    pkg-config gcc patch python3-dev; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	scripts/build-pyfuse3.sh $(PY) $(VENV)/opt/libfuse
	touch $(STAMP)

# Generated code lives in eddy/base/pb and imports itself as `eddy.base.pb.*` (the -I mapping).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Ieddy/base/pb=proto --python_out=. --pyi_out=. --grpc_python_out=. \
	  $(PROTOS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

# One command to see eddy work: local S3, the driver, CSI calls as a cluster makes them.
demo: $(STAMP)
	$(PY) -m e2e.demo

e2e: $(STAMP)
	$(PY) -m pytest -q e2e

# eddy against tmpfs, raw S3 GETs, rclone and s3fs (installed with apt-get when missing), on a
# 2 GiB file and 10k small files: a table, bench-results/bench-results.{json,png}. Root, FUSE.
# `make bench BENCH_ARGS="--quick --no-peers"` for a smoke run.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m e2e.bench $(BENCH_ARGS)

# The image from the Dockerfile (Docker with buildx): for this machine's platform, loaded
# into Docker; with PUSH=1, for amd64 and arm64, pushed to the registry named in IMAGE.
# Deploy it with deploy/ (README, "Deploy on Kubernetes").
IMAGE     ?= eddy:0.1.0
PLATFORMS ?= linux/amd64,linux/arm64
image:
	docker buildx build -t $(IMAGE) $(if $(PUSH),--platform $(PLATFORMS) --push,--load) .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

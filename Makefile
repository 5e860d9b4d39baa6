# eddy: one CSI driver that caches remote datasets on every node.
# `make test` and `make demo` do their own setup on a fresh Debian/Ubuntu machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/*.proto)

.PHONY: setup proto lint test e2e demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v fusermount3 >/dev/null && [ -e /usr/include/fuse3/fuse.h ] && command -v pkg-config >/dev/null || { \
	  echo "installing fuse3, libfuse3-dev, pkg-config"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev pkg-config; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Generated code lives in eddy/pb and imports itself as `eddy.pb.*` (the -I mapping does that).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Ieddy/pb=proto --python_out=. --pyi_out=. --grpc_python_out=. \
	  $(PROTOS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

e2e: $(STAMP)
	$(PY) -m pytest -q e2e

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# arp-sensor: `make demo` runs the netns lab demo, `make test` runs the whole suite.
# Both start with `make install` (idempotent; needs root for apt and /lib/modules).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system vm-packages venv demo test test-unit test-long lint bench image-test vm-test clean

install: system venv

system:
	@./scripts/install-system.sh

venv: $(STAMP)

# The heavy packages (podman, qemu, libvirt, vagrant-libvirt, mmdebstrap) only image-test/vm-test need.
vm-packages:
	@./scripts/install-vm.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "venv: creating $(VENV) from /usr/bin/python3 with system site-packages (for bcc)"; \
	  /usr/bin/python3 -m venv --system-site-packages $(VENV); }
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@$(PY) -c 'from sensor.kernel.loader import bpf_class; bpf_class(); import pyroute2, msgpack, click' && echo "venv: $(VENV) ready (bcc, pyroute2, msgpack, click import)"
	@touch $(STAMP)

demo: install
	@$(PY) -m sensor demo

test: install
	@$(PY) -m ruff check sensor tests bench
	@$(PY) -m pytest tests -m 'not long' --durations=15

# Lab checks that take minutes by nature (kept out of `make test`'s 15-minute budget): see README.md.
test-long: install
	@$(PY) -m pytest tests -m long --durations=15

test-unit: venv
	@$(PY) -m pytest tests -m unit -p no:cacheprovider

lint: venv
	@$(PY) -m ruff check sensor tests bench

# The container image built without a registry and run as deploy/kubernetes/daemonset.yaml runs it.
image-test: install vm-packages
	@$(PY) -m pytest tests/artifacts/test_image.py -v

bench: install
	@$(PY) -m bench all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

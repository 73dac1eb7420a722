# arp-sensor: `make demo` runs the netns lab demo, `make test` runs the whole suite.
# Both start with `make install` (idempotent; needs root for apt and /lib/modules).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The venv's extras: the test tools by default; `make install VENV_EXTRAS=` installs the sensor alone (the VM lab).
VENV_EXTRAS ?= [test]

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
	@$(PY) -m pip install -q --disable-pip-version-check -e '.$(VENV_EXTRAS)'
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

# The VM lab, booted for real (20-30 min here): libvirtd + vagrant in a network namespace of the test's own,
# an offline Debian box (vagrant/box/build.sh, cached), the scenario and the shipped unit under systemd.
vm-test: install vm-packages
	@$(PY) -m pytest tests/artifacts/test_vm.py -v -s

bench: install
	@$(PY) -m bench all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

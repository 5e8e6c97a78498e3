# lbd: quick start
#   sudo make demo   run the real lbd in a network-namespace lab (node + client), then tear down
#   sudo make test   install what the tests need and run them all
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PREFIX ?= /opt/lbd

# Debian/Ubuntu packages: the lab's tools and the real peers the interop tests run.
APT_RUNTIME := iproute2 nftables python3-venv
APT_LAB := iputils-ping arping ndisc6 tcpdump curl socat procps
APT_PEERS := bird2 frr gobgpd openbgpd exabgp serf keepalived
APT_TEST := systemd
PYTEST_ARGS ?=

.PHONY: help deps deps-demo venv demo test test-unit install clean

help:
	@sed -n '2,3p' Makefile

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,kubernetes]'
	[ ! -d examples/lbd-example-source ] || $(PY) -m pip install --quiet -e examples/lbd-example-source
	touch $@

venv: $(VENV)/.installed

deps-demo:
	@if [ "$$(id -u)" != 0 ]; then echo "run as root: sudo make $(MAKECMDGOALS)"; exit 1; fi
	@command -v apt-get >/dev/null && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_RUNTIME) $(APT_LAB) >/dev/null; } || true

deps: deps-demo
	@command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PEERS) $(APT_TEST) >/dev/null || true
	@# kubectl for the Kubernetes end-to-end tests: Debian's kubernetes-client unless one is installed already.
	@command -v kubectl >/dev/null || { command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; } || true
	@# The packaged routers must not run as system services on a test machine.
	@for s in bird frr gobgpd openbgpd exabgp serf keepalived; do systemctl disable --now $$s >/dev/null 2>&1 || true; done

demo: deps-demo venv
	$(PY) -m lbd.testing.demo

test: deps venv
	LBD_REQUIRE_ALL=1 $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

install:
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet .
	ln -sf $(PREFIX)/bin/lbd /usr/local/bin/lbd
	ln -sf $(PREFIX)/bin/lbd-ctl /usr/local/bin/lbd-ctl
	install -m 0644 systemd/lbd.service /etc/systemd/system/lbd.service
	[ -e /etc/lbd.toml ] || install -m 0640 etc/lbd.toml /etc/lbd.toml
	systemctl daemon-reload 2>/dev/null || true

clean:
	rm -rf $(VENV) build *.egg-info

# Set-up, demo and tests on a fresh Debian 12 host, as root. Every target does all the
# set-up it needs and is quiet when that set-up is already done.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
ORCH      := $(VENV)/bin/orch
STATE_DIR ?= /var/lib/orchestrator
export ORCH_STATE_DIR := $(STATE_DIR)

DEB_PACKAGES := qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev \
	pkg-config dnsmasq-base genisoimage busybox-static dropbear-bin cpio e2fsprogs iproute2 \
	iptables python3-venv python3-dev gcc \
	mmdebstrap dosfstools mtools syslinux syslinux-common fdisk util-linux
# only for the tests: `vagrant validate` of the test bed's Vagrantfile (tests/tooling),
# shellcheck of the image recipes (tests/unit/test_images.py), and the headless browser and
# its driver for the portal's test (tests/browser)
TEST_DEB_PACKAGES := vagrant vagrant-libvirt shellcheck chromium chromium-driver

# Installs the Debian packages named in $(1) that are missing, without recommends.
define apt_install_missing
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
	fi
endef

.PHONY: help setup packages test-packages venv images debian-cache lab demo test test-fast nightly check clean-demo

help:
	@echo "make demo   - set up everything, boot a scale set of 3 VMs in the lab, show them"
	@echo "make test   - set up everything, run all tests (unit, libvirt adapter, real VMs)"
	@echo "make nightly - the long real-VM suite (vm + nightly markers), reports in reports/"
	@echo "make setup  - Debian packages, $(VENV), images tiny:1 and tiny:2 (idempotent)"
	@echo "make check  - mypy and ruff"

setup: packages venv images

packages:
	$(call apt_install_missing,$(DEB_PACKAGES))

test-packages:
	$(call apt_install_missing,$(TEST_DEB_PACKAGES))

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

venv: packages $(VENV)/.installed

images: venv
	@for v in 1 2; do $(ORCH) image show tiny:$$v >/dev/null 2>&1 \
		|| $(ORCH) image build tiny --version $$v -o json >/dev/null; done

# The debian-12 recipe downloads Debian's packages (mmdebstrap) and caches the root filesystem
# it makes; the tests build that image inside the lab's namespace, which has no network, so
# the cache is filled here first, outside it (a throwaway state dir; later runs take seconds).
debian-cache: venv
	@tmp=$$(mktemp -d /var/tmp/orch-debian-cache-XXXXXX); \
	ORCH_STATE_DIR=$$tmp $(ORCH) image build debian-12 --version 0 -o json >/dev/null; \
	rc=$$?; rm -rf $$tmp; exit $$rc

lab: setup
	@$(ORCH) lab up -o json >/dev/null

demo: setup lab
	@bash scripts/demo.sh

# Everything but the tests marked `nightly` (within 30 minutes on 2 cores).
test: setup test-packages debian-cache lab
	@$(ORCH) lab exec -- $(VENV)/bin/pytest -q -p no:cacheprovider -m "not nightly" tests

test-fast: venv test-packages
	@$(VENV)/bin/pytest -q -m "not vm and not nightly" tests

# The long real-VM suite: every test marked `vm` or `nightly`, in the lab. Writes JUnit XML
# and a Markdown summary to reports/ (also when tests fail), and a screenshot of the portal in
# mid-upgrade (the browser test, on a fake world) to reports/portal.png; exits non-zero if
# either failed.
NIGHTLY_MARK ?= vm or nightly
nightly: setup test-packages debian-cache lab
	@mkdir -p reports
	@rm -f reports/portal.png; rc=0; \
	ORCH_SCREENSHOT_DIR=reports $(VENV)/bin/pytest -q -p no:cacheprovider -m browser \
		tests/browser || rc=$$?; \
	test -f reports/portal.png && echo "portal screenshot: reports/portal.png"; \
	$(ORCH) lab exec -- $(VENV)/bin/pytest -q -p no:cacheprovider -m "$(NIGHTLY_MARK)" \
		--junitxml=reports/nightly-junit.xml tests || rc=$$?; \
	$(PY) scripts/nightly_report.py reports/nightly-junit.xml -o reports/nightly.md \
		&& echo "report: reports/nightly.md (JUnit XML: reports/nightly-junit.xml)"; \
	exit $$rc

check: venv
	@$(VENV)/bin/mypy
	@$(VENV)/bin/mypy scripts/nightly_report.py
	@$(VENV)/bin/ruff check orchestrator tests scripts

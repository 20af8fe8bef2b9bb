# Developer and CI entry points. `make test` is what CI runs (through .ci/run).
#   make setup          bootstrap this machine: .venv, PostgreSQL, zstd, openssl (scripts/bootstrap.sh)
#   make test           every step in TEST_STEPS, in two lanes side by side (SIDE_BY_SIDE=0: one by one)
#   make test-unit      unit tests only
#   make test-functional  functional tests (real PostgreSQL and S3 from tests/testbed.py)
#   make test-ansible   ansible-test sanity and units on Python 3.12 (scripts/ansible-test.sh)
#   make test-sanity    ansible-test sanity only (make test runs it; the unit tests it runs as test-unit)
#   make test-integration  the modules' integration targets on the real test bed (tests/integration/run.sh)
#   make lint           ansible-lint (production profile) on roles/ and playbooks/
#   make test-molecule  the fleet roles on chroot test hosts, as root: molecule/ (docs/ROLES.md, "Testing")
#   make demo           the end-to-end demo (scripts/demo.py)
#   make bench          benchmarks on a ~1 GB database (~50 min): docs/benchmarks.md, docs/images/, bench/results/
#   make bench-smoke    the same on a tiny database, < 1 minute, output in build/bench/smoke (CI)
#   make bench-physical base backups and PITR restores vs pgBackRest and barman-cloud, < 5 minutes (bench/physical.py)
#   make clean          remove build/ (make distclean also removes .venv)

# absolute, as some steps run it from other directories
PYTHON := $(CURDIR)/.venv/bin/python

# The steps of `make test`, in two lanes side by side (scripts/side-by-side.sh: the side lane's output is printed
# when both are done, and last, when a lane failed, which step and why). Each step that needs PostgreSQL and S3 starts its own (tests/testbed.py, Molecule's services).
# Add a step by adding its target to a lane; keep the lanes about as long as each other: a lane that ends first leaves
# a core idle (CI of 2026-12-02: the main lane 24 min without the integration targets, the side lane 30.5 with them,
# its last 6.5 minutes alone on a half-idle machine). CI's 2 cores are busy
# all the time with both lanes running (vmstat: ~90% busy), so what makes `make test` shorter is less work: the
# unit tests run once (test-unit; `ansible-test units` runs the same tests/unit again, at twice the CPU, and is
# left to `make test-ansible`). The main lane's last step, Molecule's other scenarios, uses the images the side
# lane's first step builds (build-cache.sh holds a lock while it builds).
MAIN_STEPS := test-functional demo test-integration test-molecule-main
SIDE_STEPS := molecule-cache test-unit test-sanity lint test-molecule-side
TEST_STEPS := $(MAIN_STEPS) $(SIDE_STEPS)
# Molecule scenarios the side lane runs (each has its own hosts, PostgreSQL and S3 endpoint); the main lane runs
# the others.
MOLECULE_SIDE_SCENARIOS := drill seed_takeover upgrade archiving
SIDE_BY_SIDE ?= 1

.PHONY: setup test wheelhouse molecule-cache test-molecule-side test-molecule-main test-unit test-functional test-ansible test-sanity test-integration lint test-molecule demo bench bench-smoke bench-physical bench-deps clean distclean
.NOTPARALLEL:

# The lanes' own makes skip it (SKIP_SETUP=1): `make test` bootstraps once, before both.
setup:
ifneq ($(SKIP_SETUP),1)
	@echo "+ scripts/bootstrap.sh"
	@scripts/bootstrap.sh
endif

ifeq ($(SIDE_BY_SIDE),0)
test: setup wheelhouse $(TEST_STEPS)
else
test: setup wheelhouse
	@scripts/side-by-side.sh build/logs/side-lane.log "$(MAKE) --no-print-directory SKIP_SETUP=1 $(SIDE_STEPS)" \
		"$(MAKE) --no-print-directory SKIP_SETUP=1 $(MAIN_STEPS)"
endif

# Functional tests run in two workers (each starts its own PostgreSQL and S3 endpoint): about half the
# wall time on a 2-core machine. FUNCTIONAL_WORKERS=0 runs them in this process.
FUNCTIONAL_WORKERS ?= 2

# run_pytest DIR [ARGS]: pytest -q DIR ARGS. Its exit 5 ("no tests collected") counts as success only while
# DIR has no test files yet; once tests exist, collecting none is a failure.
define run_pytest
	@echo "+ $(PYTHON) -m pytest -q $(1) $(2)"
	@$(PYTHON) -m pytest -q $(1) $(2); status=$$?; \
	if [ $$status -eq 5 ] && [ -z "$$(find $(1) -name 'test_*.py' -o -name '*_test.py' | head -n 1)" ]; then \
		echo "(no tests in $(1) yet)"; status=0; \
	fi; \
	exit $$status
endef

test-unit: setup
	$(call run_pytest,tests/unit)

test-functional: setup
	$(call run_pytest,tests/functional,-n $(FUNCTIONAL_WORKERS) --durations=40)

test-ansible: setup
	@echo "+ scripts/ansible-test.sh"
	@scripts/ansible-test.sh

test-sanity: setup
	@echo "+ scripts/ansible-test.sh sanity"
	@scripts/ansible-test.sh sanity

test-integration: setup
	@echo "+ tests/integration/run.sh"
	@PYTHON=$(abspath $(PYTHON)) tests/integration/run.sh

# ansible-lint and Molecule find ansible-playbook, pytest and friends on PATH; their caches and Molecule's
# scenario state go to build/molecule (base image and wheelhouse too, built on the first run).
MOLECULE_ENV := PATH="$(CURDIR)/.venv/bin:$$PATH" ANSIBLE_HOME="$(CURDIR)/build/molecule/ansible-home"

lint: setup
	@echo "+ ansible-lint --offline --profile production roles playbooks"
	@$(MOLECULE_ENV) .venv/bin/ansible-lint --offline --profile production roles playbooks

# The engine's wheelhouse alone (seconds, no Debian mirror), before the lanes split: functional tests that install the
# engine as the postgres OS user runs it (test_wal_archiving.py: archive_command) find it, whichever lane is first.
wheelhouse: setup
	@echo "+ molecule/shared/build-cache.sh wheelhouse"
	@molecule/shared/build-cache.sh wheelhouse >/dev/null

# Molecule's base images and wheelhouse (molecule/shared/build-cache.sh), built ahead so that the side lane, not
# Molecule's create step, waits on the Debian mirror. Exit 4: the mirror does not serve trixie (the upgrade
# scenario skips itself then, saying why).
molecule-cache: setup
	@echo "+ molecule/shared/build-cache.sh all bookworm; molecule/shared/build-cache.sh base trixie"
	@molecule/shared/build-cache.sh all bookworm >/dev/null
	@molecule/shared/build-cache.sh base trixie >/dev/null; status=$$?; [ $$status -eq 0 ] || [ $$status -eq 4 ] || exit $$status

test-molecule: setup
	@echo "+ molecule -c molecule/shared/base.yml test --all"
	@$(MOLECULE_ENV) .venv/bin/molecule -c molecule/shared/base.yml test --all

# `make test` splits them: MOLECULE_SIDE_SCENARIOS in the side lane, the rest at the end of the main lane.
test-molecule-side: setup
	@echo "+ molecule -c molecule/shared/base.yml test $(addprefix -s ,$(MOLECULE_SIDE_SCENARIOS))"
	@$(MOLECULE_ENV) .venv/bin/molecule -c molecule/shared/base.yml test $(addprefix -s ,$(MOLECULE_SIDE_SCENARIOS))

test-molecule-main: setup
	@echo "+ molecule -c molecule/shared/base.yml test --all $(addprefix --exclude ,$(MOLECULE_SIDE_SCENARIOS))"
	@$(MOLECULE_ENV) .venv/bin/molecule -c molecule/shared/base.yml test --all $(addprefix --exclude ,$(MOLECULE_SIDE_SCENARIOS))

demo: setup
	@echo "+ $(PYTHON) scripts/demo.py"
	@$(PYTHON) scripts/demo.py

# Benchmarks (bench/run.py): not part of `make test`; their extra packages stay out of requirements-dev.txt.
bench-deps: setup
	@if [ "$$(cat .venv/.bench-stamp 2>/dev/null)" != "$$(sha256sum < bench/requirements.txt)" ]; then \
		echo "+ $(PYTHON) -m pip install -r bench/requirements.txt"; \
		$(PYTHON) -m pip install --disable-pip-version-check --no-input -q -r bench/requirements.txt >.venv/bench-pip.log 2>&1 \
			|| { tail -n 20 .venv/bench-pip.log; exit 1; }; \
		sha256sum < bench/requirements.txt >.venv/.bench-stamp; \
	fi

bench: bench-deps
	@echo "+ $(PYTHON) bench/run.py"
	@$(PYTHON) bench/run.py

bench-smoke: bench-deps
	@echo "+ $(PYTHON) bench/run.py --smoke"
	@$(PYTHON) bench/run.py --smoke

# Issue 18 item 8, not part of `make test`: a table on stdout, raw numbers in build/bench/physical.json. Bigger runs:
# $(PYTHON) bench/physical.py --scale 1G --rounds 3. Needs no bench-deps (no chart).
bench-physical: setup
	@echo "+ $(PYTHON) bench/physical.py"
	@$(PYTHON) bench/physical.py

clean:
	@echo "+ rm -rf build"
	@rm -rf build

distclean: clean
	@echo "+ rm -rf .venv"
	@rm -rf .venv

# dinp's entry points. `make` alone lists the targets (each one's `## ` comment).
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help setup venv services images demo stop test test-unit lint bench clean bench-router bench-scale docs screenshots

help: ## List the targets
	@echo "usage: make TARGET [PYTEST_ARGS='...']"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

setup: ## Install packages, .venv, start dockerd/registry/MariaDB/Redis, build images
	@bash scripts/setup.sh

venv: ## Only create/update .venv (pip install -e '.[dev]')
	@bash scripts/setup.sh venv

services: ## Only start dockerd, the registry, MariaDB and Redis
	@bash scripts/setup.sh services

images: ## Only build dinp/busybox:1, hello:2 and the base images of dinp build
	@bash scripts/setup.sh images

demo: setup ## Run `dinp up` in the background and deploy 3 instances of the hello app
	@bash scripts/demo.sh

stop: ## Stop the demo's `dinp up` and remove its containers
	@bash scripts/demo.sh stop

test: setup ## Run the whole test suite (PYTEST_ARGS='-k foo' to pass arguments)
	@bash scripts/test.sh $(PYTEST_ARGS)

test-unit: venv ## Run the unit tests only (no services needed)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

lint: venv ## ruff check and mypy
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: setup ## Run the benchmarks (benchmarks/run.py, then build.py; BENCH_ARGS='...')
	@if [ -f benchmarks/run.py ]; then \
		$(PY) benchmarks/run.py $(BENCH_ARGS); \
	else \
		echo "no benchmarks/run.py yet"; exit 1; \
	fi
	$(PY) benchmarks/build.py $(BENCH_ARGS)

bench-router: venv ## dinp's router vs Caddy and nginx, one core each (wrk); updates docs/performance.md
	$(PY) benchmarks/router.py --update-doc $(BENCH_ARGS)

bench-scale: venv ## One server, 100/1,000/5,000 simulated nodes (fake agents); updates docs/performance.md
	$(PY) benchmarks/scale.py --update-doc $(BENCH_ARGS)

docs: venv ## Write docs/cli.md from the CLI itself (a test fails when it is stale)
	$(PY) -c 'from dinp.cli import cli; from dinp.commands.reference import markdown; \
		print(markdown(cli), end="")' > docs/cli.md

screenshots: setup ## Run the Dashboard's browser tests, saving screenshots in docs/screenshots
	mkdir -p docs/screenshots
	DINP_SCREENSHOTS=$(CURDIR)/docs/screenshots $(VENV)/bin/pytest tests/e2e/test_dashboard.py

clean: ## Stop the demo, remove state/, build/ and caches (keeps .venv and images)
	@if [ -f state/dinp-up.pid ]; then bash scripts/demo.sh stop; fi
	rm -rf state build .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

# Two entry points, each doing all set-up itself (system packages, a cached virtualenv keyed by the
# requirements' hash under ~/.cache/rvc-trainer) and fast when already set up.
SHELL := /bin/bash
.ONESHELL:
.PHONY: demo test test-fast lint bench setup

setup:
	@bash scripts/setup.sh >/dev/null

demo:
	@set -euo pipefail
	V=$$(bash scripts/setup.sh)
	"$$V/bin/python" -m consumer demo --out demo-out

test:
	@set -euo pipefail
	V=$$(bash scripts/setup.sh)
	"$$V/bin/ruff" check .
	"$$V/bin/ruff" format --check .
	bash scripts/infra_checks.sh static
	"$$V/bin/python" -m pytest $(PYTEST_ARGS)

test-fast:
	@set -euo pipefail
	V=$$(bash scripts/setup.sh)
	"$$V/bin/python" -m pytest -m "not slow and not emulator" $(PYTEST_ARGS)

lint:
	@set -euo pipefail
	V=$$(bash scripts/setup.sh)
	"$$V/bin/ruff" check .
	"$$V/bin/ruff" format --check .

bench:
	@set -euo pipefail
	V=$$(bash scripts/setup.sh)
	"$$V/bin/python" bench/prepare.py
	"$$V/bin/python" bench/train.py --preset tiny --steps 50
	"$$V/bin/python" bench/consumer.py

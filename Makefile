# The two commands of README: `make up` (the whole local network answering a
# verified, billed request) and `make test`. Both install what is missing first.
.PHONY: install up test lint bench devnet

install:
	@bash scripts/install.sh

up: install
	.venv/bin/zgserve up

devnet: install
	.venv/bin/zgserve devnet --keep

lint:
	.venv/bin/ruff check zgserve tests bench
	.venv/bin/ruff format --check zgserve tests bench
	.venv/bin/mypy

test: install lint
	.venv/bin/pytest -q

bench: install
	.venv/bin/python bench/service_overhead.py
	.venv/bin/python bench/proxy_overhead.py
	.venv/bin/python bench/settlement_gas.py

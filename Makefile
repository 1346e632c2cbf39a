# The two commands of the README: `make up` and `make test`.
.PHONY: up down status test lint bootstrap

bootstrap:
	@scripts/bootstrap.sh

up: bootstrap
	.venv/bin/pipeline up

down:
	.venv/bin/pipeline down

status:
	.venv/bin/pipeline status

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: bootstrap lint
	scripts/install-browser.sh
	.venv/bin/pipeline services up
	.venv/bin/pytest

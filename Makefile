# The README's two commands: `make run` and `make test`. Everything else is for development.
.PHONY: run test test-pg test-all lint bench setup

run:
	@bash scripts/run.sh

test:
	@bash scripts/test.sh $(ARGS)

test-pg:
	@DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test bash scripts/test.sh $(ARGS)

setup:
	@bash scripts/setup.sh --test

lint:
	@.venv/bin/ruff check bot agent_console knowledge_base storage tests bench
	@.venv/bin/mypy bot agent_console knowledge_base storage

bench:
	@.venv/bin/loket bench

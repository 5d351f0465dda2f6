# One place for the project's commands; CI runs the same ones.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check bench mutate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the main job (worker + beat) on the embedded default: no server needed.
run: $(STAMP)
	@test -f healthgate.toml || $(BIN)/healthgate init
	$(BIN)/healthgate run

## Lint, type-check and run every test (Redis and PostgreSQL tests skip if absent, fail in CI).
# Twice as many test processes as cores (8 at most: each has a Redis database of its own,
# counted down from 15): much of the suite waits on PostgreSQL, Redis and
# worker processes, and on 2 cores 4 processes ran it in 83 % of the time 2 took.
test: lint
	$(BIN)/python -m pytest -n $$(( $$(nproc) < 4 ? $$(nproc) * 2 : 8 )) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## The benchmark against Redis and PostgreSQL here; results under bench/results (SIZE=smoke: quick).
SIZE ?= full
bench: $(STAMP)
	$(BIN)/python -m bench --size $(SIZE)

## Mutation testing of policies/ over the tests that need no server; lists the mutants
## that survive and prints the score. Not part of `make test`: it takes a while.
mutate: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mutmut>=3.8,<4'
	$(BIN)/mutmut run --max-children $$(nproc) || true
	$(BIN)/mutmut results
	$(BIN)/mutmut export-cicd-stats >/dev/null
	$(BIN)/python -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); \
	  tested = s["total"] - s["skipped"]; killed = s["killed"] + s["timeout"]; \
	  print(f"mutation score: {killed} of {tested} mutants killed ({killed / tested:.1%})")'

clean:
	rm -rf $(VENV) .healthgate .pytest_cache .mypy_cache .ruff_cache mutants

# One place for the everyday commands; each runs in .venv, created from requirements.txt on first
# use (and refreshed when requirements.txt changes). Pass extra arguments with ARGS="…".
#   make demo   the embedded demo (no services needed)        make test   python -m pytest
#   make lint   ruff check + format check                     make bench  the benchmark's smoke run
#   make up     the whole stack in Docker (compose.yaml)      make down   stop it
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: demo test lint bench up down

$(VENV)/.requirements: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/.requirements
	$(BIN)/python -m massmailer demo $(ARGS)

# The tests use PostgreSQL, RabbitMQ and Redis on localhost when usable, else start their own
# (MASSMAILER_TEST_SERVICES=own forces that; see README "Development").
test: $(VENV)/.requirements
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.requirements
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.requirements
	$(BIN)/python bench/bench_throughput.py $(if $(ARGS),$(ARGS),--smoke)

up:
	docker compose up --build --detach --wait

down:
	docker compose down

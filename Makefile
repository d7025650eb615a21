# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv at the repo root on first use and install wsi-mil into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/wsi-mil demo

# The tests run after the lint gate: a formatting, rule or type error fails `make test` too.
test: lint
	$(BIN)/python -m pytest -q

# The lint gate: formatting, the rule set in pyproject.toml [tool.ruff.lint], and types.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy wsi_mil

clean:
	rm -rf $(VENV) wsi-mil-demo .pytest_cache

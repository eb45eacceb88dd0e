# Two entry points, each doing its own set-up on a fresh clone: `make quickstart` and `make test`
# (`make test-fast` skips the tests marked slow: Ray, searches, end-to-end CLI runs).
# VENV may live outside the clone (CI reuses one): make test VENV=~/.cache/nas-kd/venv
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nas-kd-installed

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install quickstart test test-fast lint digits-folder
install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/nas-kd search studies/quickstart.yaml --fresh

# scikit-learn's digits as an image folder, for studies/own_data.yaml (docs/your-data.md)
digits-folder: $(STAMP)
	$(BIN)/python scripts/make_digits_folder.py data/digits_folder

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The inner loop: no Ray, no end-to-end runs (tests marked slow), under 2 minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

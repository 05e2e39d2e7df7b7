# Two commands a new user needs: `make book` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The stamp holds a hash of pyproject.toml: the install is redone only when the dependencies changed.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PROFILE ?= full
JOBS ?= 2  # zoo runs trained at once, one thread each (see `tprune zoo --help`)
export TPRUNE_DATA ?= $(abspath ../shared/data)

.PHONY: venv test book retrain site-check clean-book

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[book,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# One output folder per profile: full -> _build/html, smoke -> _build/smoke/_build/html (own execution cache).
# Chapters stored current in results/ render without models or audio; the others are executed, after training what
# they need (`tprune book --jobs`). Retraining the released models from scratch: `make retrain` (hours on 2 cores).
book: $(STAMP)
	TPRUNE_PROFILE=$(PROFILE) $(BIN)/tprune book --profile $(PROFILE) --jobs $(JOBS) $(if $(REEXECUTE),--reexecute) $(if $(NO_TRAIN),--no-train)

retrain: $(STAMP)
	$(BIN)/tprune zoo --profile $(PROFILE) --roles mae,base --jobs $(JOBS)

# Opens every page of the last build in headless Chromium (installs Debian's chromium when missing).
site-check: $(STAMP)
	$(BIN)/python tools/site_check.py

clean-book:
	rm -rf _build book/reruns/_toc.yml book/reruns/index.md

# The two commands README starts with, on a fresh clone: each creates .venv (or updates it when pyproject.toml
# changed) and then runs. People who install into their own environment skip this file: pip install -e ".[test]".
#
#   make quickstart            # the offline quickstart (robustify finetune, no arguments)
#   make test                  # the test suite, as CI runs it (.ci/run calls this)
#   make quickstart CPU=1      # torch's CPU-only build (a smaller .venv; see README "Install"): installed first in a
#                              # new .venv, or put in place of a CUDA build in an existing one
#
# PYTHON: the interpreter that makes .venv (3.10 or newer); VENV: where it lives.

PYTHON ?= python3
VENV ?= .venv
CPU ?=
TORCH_INDEX ?= $(if $(CPU),https://download.pytorch.org/whl/cpu,)
PIP = $(VENV)/bin/python -m pip

.PHONY: quickstart test venv clean-venv

TORCH_CPU = $(if $(CPU),$(VENV)/.torch-cpu,)

# the interpreter itself
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# CPU=1: torch's CPU-only build, before the package (so its torch requirement is met by it), also in a .venv made
# earlier without CPU=1: a CUDA build found there is replaced (pip alone would keep it: "torch" is satisfied)
$(VENV)/.torch-cpu: | $(VENV)/bin/python
	$(VENV)/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)" 2>/dev/null || \
		$(PIP) install --force-reinstall torch torchvision --index-url $(TORCH_INDEX)
	touch $@

# the package (an editable install: the clone's code runs), redone when pyproject.toml changes
$(VENV)/.robustify: pyproject.toml | $(VENV)/bin/python $(TORCH_CPU)
	$(PIP) install -e .
	touch $@

# the package with the test tools (pytest, xdist, ruff, pyautoattack, hypothesis, torch-optimi) and the original
# projects the converters are checked against (robustbench, MadryLab robustness: --no-deps, their pins clash with
# timm and torchvision; the "originals" extra holds what they import)
ORIGINALS = robustbench==1.1.1 robustness==1.2.1
$(VENV)/.robustify-test: pyproject.toml | $(VENV)/bin/python $(TORCH_CPU)
	$(PIP) install -e ".[test,originals]"
	$(PIP) install --no-deps $(ORIGINALS)
	touch $@ $(VENV)/.robustify

venv: $(VENV)/.robustify

quickstart: $(VENV)/.robustify
	$(VENV)/bin/robustify finetune

test: $(VENV)/.robustify-test
	$(VENV)/bin/python -m pytest -q

clean-venv:
	rm -rf $(VENV)

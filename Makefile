# The notebook companion to 《從零建構大模型》. Two commands on a fresh machine:
#   make lab    # set up (virtual environment, packages, data cache) and open the book in JupyterLab
#   make test   # set up and run every test: helper unit tests + every notebook under nbval
PYTHON  ?= python3
VENV    ?= .venv
SHARED  ?= ../shared/data
NB      ?= notebooks/*.ipynb
PY      := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 LLMBOOK_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: help install data lab test unit check notebooks results student lint clean bench site

help:
	@echo "make lab        set up and open the notebooks in JupyterLab"
	@echo "make test       set up and run all tests (helpers + every notebook under nbval), offline"
	@echo "make unit       only the fast helper tests"
	@echo "make check      the notebooks' shared conventions and README's table, from the committed notebooks (seconds)"
	@echo "make notebooks  re-execute notebooks in place in a fresh kernel (NB=notebooks/02_gpt.ipynb for one)"
	@echo "make results    rewrite README's results table from the executed notebooks"
	@echo "make student    classroom copies without the exercises' answers, in student/"
	@echo "make lint       ruff over helpers, tests, scripts and notebooks"
	@echo "make site       the book as a website (executed notebooks, search, math) in site/, offline (~15 s)"
	@echo "make bench      time our models against PyTorch/transformers/ONNX Runtime; data/bench/bench.json + README (~3 min)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# pip is quick when everything is already there, so we always ask it.
install: $(PY)
	$(PY) -m pip install -q -r requirements.txt
	@$(PY) -m pip install -q --no-deps -e . >/dev/null 2>&1 || $(PY) -m pip install --no-deps -e .

# Fill the data cache (data/cache) from an offline mirror when there is one; loaders download otherwise.
data: install
	@if [ -d "$(SHARED)" ]; then $(PY) -m helpers.data --from "$(SHARED)"; \
	else echo "no mirror at $(SHARED): the loaders will download the data on first use"; fi
	$(PY) -m helpers.teacher  # chapter 10's fine-tuned SST-2 teacher, into the cache (trained once, ~2 min on a CPU)

lab: data
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

unit: data
	$(OFFLINE) $(PY) -m pytest -q tests

# Reads the committed notebooks, executes nothing: conventions (README "Contributing"), RESULTS lines, README's table.
check: install
	$(OFFLINE) $(PY) -m pytest -q tests/test_notebooks.py

test: data
	$(OFFLINE) $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=900

notebooks: data
	@for nb in $(NB); do echo "== $$nb"; \
	  $(OFFLINE) $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=900 --ExecutePreprocessor.kernel_name=python3 "$$nb" || exit 1; done
	$(MAKE) --no-print-directory results

results: install
	$(PY) scripts/results.py

# Side-by-side timings (ours vs the libraries) into data/bench/bench.json and data/bench/scaling.png, then README's
# performance section from that JSON. BENCH_QUICK=1 for a seconds-long smoke run (tests/test_bench.py runs it).
bench: install
	$(OFFLINE) $(PY) scripts/bench.py
	$(PY) scripts/bench.py --readme

# The website: the committed notebooks (not executed) as HTML with the book's table of contents, Chinese full-text
# search and MathJax, all served from site/ (no CDN). View: python -m http.server -d site. See scripts/site/.
site: install
	$(PY) scripts/site/build.py

# Classroom copies: every cell tagged `answer` emptied (source and outputs), the rest as committed.
student: install
	$(PY) scripts/student.py

lint: install
	$(VENV)/bin/ruff check helpers tests scripts notebooks

clean:
	rm -rf .pytest_cache .ruff_cache **/__pycache__ notebooks/runs notebooks/checkpoints student site

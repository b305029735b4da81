# The two commands a new user needs: `make run` (the whole loop) and `make test` (the tests).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
UV := $(PYTHON) -m uv

.PHONY: run test test-all venv demo lab lock readme sync-check bench docs screenshots preview clean

## run: create the environment, run the pipeline on the full flights example (examples/flights.toml), serve the champion and ask it once
run: venv
	$(BIN)/mlops_run
	@$(MAKE) --no-print-directory demo

## test: the fast tier, for every change: each notebook's own tests (nbdev_test), then the integration tests not marked slow
test: venv
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/pytest -q -m "not slow"

## test-all: `make test`, then the slow tier: the notebook cells flagged `#| slow`, replays, fault injection, scale-out, load and the browser (what CI runs)
test-all: test
	$(BIN)/nbdev_test --n_workers 2 --timing --flags slow --file_re "$(SLOW_NOTEBOOKS)"
	$(BIN)/pytest -q -m slow

# the notebooks with cells flagged `#| slow` (a whole pipeline run, ten million rows): only these run again with the flag
SLOW_NOTEBOOKS = $(shell grep -l '"\#| slow' nbs/*.ipynb | xargs -n1 basename | paste -sd'|')

# the worked example; a settings file of your own (mlops_init writes one) is named the same way, or is ./mlops.toml
run demo docs screenshots: export MLOPS_CONFIG ?= examples/flights.toml

# XGBoost's OpenMP threads spin while they wait: beside the servers and kernels of the tests they only steal the cores
test test-all: export OMP_WAIT_POLICY = PASSIVE
# the documentation site's test renders it with Quarto: one in QUARTO_HOME counts as installed
test-all: export PATH := $(QUARTO_HOME)/bin:$(PATH)

## venv: the project's environment, installed from the lock, with its Jupyter kernel
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock settings.ini setup.py
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	@test -x $(BIN)/python || $(UV) venv -q --python $(PYTHON) $(VENV)
	$(UV) pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name mlops_nb --display-name "Python (mlops_nb)" >/dev/null
	@touch $@

## demo: start the server, send examples/predict_request.json, print the answer, stop the server
demo: venv
	@mkdir -p state
	@$(BIN)/mlops_serve --port $(PORT) > state/serve.log 2>&1 & pid=$$!; \
	trap "kill $$pid 2>/dev/null; wait $$pid 2>/dev/null" EXIT; \
	for i in $$(seq 120); do curl -sf http://127.0.0.1:$(PORT)/ready >/dev/null && break; \
	  kill -0 $$pid 2>/dev/null || { cat state/serve.log; exit 1; }; sleep 0.5; done; \
	echo "POST http://127.0.0.1:$(PORT)/predict  (body: examples/predict_request.json)"; \
	curl -sS --fail-with-body -H 'content-type: application/json' --data @examples/predict_request.json http://127.0.0.1:$(PORT)/predict; \
	echo

# NB: the folder or notebook Lab opens (a notebook opens with its folder in the file browser), e.g. a pipeline run's
# executed notebooks: `make lab NB=runs/<run_id>` or `make lab NB=runs/<run_id>/03_clean.ipynb`. LAB_ARGS: more flags (as root: --allow-root).
LAB_PORT ?= 8888
LAB_ARGS ?=
NB ?= nbs

## lab: JupyterLab on http://127.0.0.1:8888 (LAB_PORT) for the notebooks, or NB=<folder or notebook> such as a run's; new notebooks get the kernel "Python (mlops_nb)"
lab: venv
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --MappingKernelManager.default_kernel_name=mlops_nb $(LAB_ARGS) "$(NB)"

## bench: the benchmarks; each writes bench/results/<name>.json
bench: venv
	$(BIN)/python bench/data_bench.py
	$(BIN)/python bench/tune_bench.py
	$(BIN)/python bench/busy.py

## lock: resolve requirements.in into exact pins in requirements.lock, and the images' requirements-serve.in and requirements-pipeline.in into theirs, at the same versions
lock:
	$(UV) pip compile -q requirements.in -o requirements.lock --python-version 3.11
	$(UV) pip compile -q requirements-serve.in -c requirements.lock -o requirements-serve.lock --python-version 3.11
	$(UV) pip compile -q requirements-pipeline.in -c requirements.lock -o requirements-pipeline.lock --python-version 3.11

## docs: the documentation site in _docs/, from the notebooks and the latest run, rendered by nbdev with Quarto (offline; Quarto must be installed)
docs: venv
	PATH="$(QUARTO_HOME)/bin:$$PATH" $(BIN)/mlops_docs

## screenshots: `make docs`, then the README's pictures of the site's home and monitoring pages (nbs/images/*.png; needs Chromium)
screenshots: venv
	PATH="$(QUARTO_HOME)/bin:$$PATH" $(BIN)/mlops_docs --screenshots nbs/images

## preview: nbdev_preview, the site as a writer edits it: the notebooks as they are, a page re-rendered when its notebook is saved
preview: venv
	PATH="$(QUARTO_HOME)/bin:$$PATH" $(BIN)/nbdev_preview --port $(PREVIEW_PORT) --no_browser

# where a Quarto without a system install may live (its bin/ is searched first)
QUARTO_HOME ?= $(HOME)/.local/quarto
PREVIEW_PORT ?= 3000

## readme: regenerate README.md from nbs/index.ipynb (its pictures, in nbs/images/, seen from the top folder)
readme: venv
	$(BIN)/jupyter nbconvert --log-level WARN --to markdown nbs/index.ipynb --stdout | sed 's#](images/#](nbs/images/#g' > README.md

## sync-check: fail when the notebooks, the package or the README are out of sync
sync-check: venv
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	@$(MAKE) --no-print-directory readme
	@git diff --exit-code --stat -- nbs mlops_nb README.md || { echo "notebooks, package and README are not in sync: run nbdev_export, nbdev_clean and make readme"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- mlops_nb)" || { echo "nbdev_export made untracked files in mlops_nb"; exit 1; }

clean:
	rm -rf $(VENV) _proc _docs _docs_build

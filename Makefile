# Every command the README shows is a target here. `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned: on a CPU-only machine an unpinned torch pulls several GB of CUDA wheels.
DEPS   := torch==2.13.0 transformers==5.19.0 tokenizers math-verify==0.9.0 tqdm pytest
ARGS   ?=

.PHONY: install demo test train clean

install: $(VENV)/.installed

$(VENV)/.installed: Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(DEPS)
	touch $@

demo: install          ## offline: build + pre-train a tiny model, then Dr. GRPO vs GRPO on CPU (<10 min)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python drgrpo.py demo $(ARGS)

test: install          ## the unit tests, bias demonstrations and an end-to-end run (CPU, a few minutes)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q tests $(ARGS)

train: install         ## the paper's recipe: Qwen2.5-Math-1.5B, MATH level 3-5 (needs a GPU and the hub)
	$(BIN)/python drgrpo.py train $(ARGS)

clean:
	rm -rf runs

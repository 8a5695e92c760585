"""data/math/train_trl.py, the TRL recipe of "When one GPU is not enough", run as written: every
drgrpo Config field that has a TRL counterpart lands in the GRPOConfig field that the table in
data/math/README.md names, with the value it should have; the reward is drgrpo's (truncated = 0);
and one TRL step on this CPU trains the tiny model.

How a change on one side only is caught: the test changes each Config field alone and records which
GRPOConfig fields move (the mapping the script really implements); that set of pairs must equal the
table's, and each mapped field must hold the value written in EXPECTED below, chosen to differ from
TRL's default, so a mapping that is dropped, retargeted or miscomputed in the script, the table or
this file fails here."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

import drgrpo
from drgrpo import Config

pytest.importorskip("trl", reason="TRL is an optional extra (make install brings it)")
from trl import GRPOConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "data", "math", "train_trl.py")
TABLE_PAGE = os.path.join(ROOT, "data", "math", "README.md")
# the mapping is built for 2 GPUs: per-GPU and total batch sizes must differ
WORLD, STOP_IDS = 2, [5, 7]
# Every mapped field away from its default (and divisibility kept), so that a missing mapping shows
BASE = Config(
    algo="grpo",
    adv_norm="none",
    loss_agg="seq_mean_token_mean",
    group_size=4,
    prompts_per_rollout=6,
    max_new_tokens=24,
    temperature=0.7,
    top_p=0.9,
    lr=3e-5,
    grad_clip=0.5,
    train_batch_size=12,
    micro_batch_size=3,
    epochs_per_rollout=2,
    clip_eps_low=0.1,
    clip_eps_high=0.28,
    kl_beta=0.04,
    steps=5,
    seed=7,
    dtype="fp32",
    gradient_checkpointing=False,
    save_every=2,
    keep_checkpoints=3,
    out_dir="runs/trl-test",
    sampler="vllm",
    vllm_gpu_memory=0.5,
)
# A second valid value for each field that reaches GRPOConfig
OTHER = dict(
    adv_norm="group",
    loss_agg="token_mean",
    group_size=2,
    prompts_per_rollout=12,
    max_new_tokens=32,
    temperature=0.8,
    top_p=0.8,
    lr=1e-4,
    grad_clip=2.0,
    micro_batch_size=6,
    train_batch_size=24,
    epochs_per_rollout=3,
    clip_eps_low=0.15,
    clip_eps_high=0.3,
    kl_beta=0.1,
    steps=6,
    seed=8,
    gradient_checkpointing=True,
    save_every=3,
    keep_checkpoints=1,
    out_dir="runs/trl-other",
    sampler="hf",
    vllm_gpu_memory=0.6,
    template="r1",
)
# bf16=True cannot be built on a CPU (transformers refuses it), so dtype's one pair is stated, its
# value still checked
STATED_PAIRS = {("dtype", "bf16")}
# TRL computes it from generation_batch_size and per_device_train_batch_size
DERIVED = {"steps_per_generation"}
# Config fields that reach the script, the dataset or the reward function, never a GRPOConfig field
ELSEWHERE = {
    "algo",
    "loss_norm_const",
    "model",
    "train_data",
    "template",
    "r1_strict",
    "grade_workers",
    "grade_timeout",
    "resume",
    "eval_data",
    "eval_every",
    "eval_n",
    "eval_grade_cut",
    "fused_head",
    "log_rollouts",
    "doctor",
}


def updates(c):  # optimizer steps per drgrpo step
    return c.prompts_per_rollout * c.group_size // c.train_batch_size * c.epochs_per_rollout


EXPECTED = {  # GRPOConfig field -> its value for a resolved Config c on WORLD GPUs
    "scale_rewards": lambda c: c.adv_norm,
    "loss_type": lambda c: {
        "seq_mean_token_mean": "grpo",
        "token_mean": "dapo",
        "seq_mean_token_sum_norm": "dr_grpo",
    }[c.loss_agg],
    "num_generations": lambda c: c.group_size,
    "generation_batch_size": lambda c: c.prompts_per_rollout * c.group_size,
    "max_completion_length": lambda c: c.max_new_tokens,
    "temperature": lambda c: c.temperature,
    "top_p": lambda c: c.top_p,
    "learning_rate": lambda c: c.lr,
    "max_grad_norm": lambda c: c.grad_clip,
    "per_device_train_batch_size": lambda c: c.micro_batch_size,
    "gradient_accumulation_steps": lambda c: c.train_batch_size // (c.micro_batch_size * WORLD),
    "num_iterations": lambda c: c.epochs_per_rollout,
    "epsilon": lambda c: c.clip_eps_low,
    "epsilon_high": lambda c: c.clip_eps_high,
    "beta": lambda c: c.kl_beta,
    "max_steps": lambda c: c.steps * updates(c),
    "seed": lambda c: c.seed,
    "bf16": lambda c: c.dtype == "bf16",  # fp32 here; auto would follow torch.cuda.is_available()
    "gradient_checkpointing": lambda c: c.gradient_checkpointing,
    "save_steps": lambda c: (c.save_every or c.steps) * updates(c),
    "save_total_limit": lambda c: c.keep_checkpoints or None,
    "output_dir": lambda c: c.out_dir,
    "use_vllm": lambda c: c.sampler != "hf",
    "vllm_enable_sleep_mode": lambda c: c.sampler != "hf",  # colocate mode
    "vllm_gpu_memory_utilization": lambda c: c.vllm_gpu_memory,
    "generation_kwargs": lambda c: (
        {
            "stop_token_ids": STOP_IDS,
            "stop": drgrpo.STOP_STRINGS[c.template] or None,
            "include_stop_str_in_output": True,
        }
        if c.sampler != "hf"
        else None
    ),
    # drgrpo's fixed choices: constant lr, truncated responses kept (reward 0), no sampler-side
    # importance-sampling correction
    "lr_scheduler_type": lambda c: "constant",
    "adam_beta1": lambda c: drgrpo.ADAM["betas"][0],
    "adam_beta2": lambda c: drgrpo.ADAM["betas"][1],
    "weight_decay": lambda c: drgrpo.ADAM["weight_decay"],
    "mask_truncated_completions": lambda c: False,
    "vllm_importance_sampling_correction": lambda c: False,
}
FIXED = {"lr_scheduler_type", "mask_truncated_completions", "vllm_importance_sampling_correction"}
FIXED |= {"adam_beta1", "adam_beta2", "weight_decay"}  # drgrpo.ADAM


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_dict(args):
    return {k: getattr(args, k) for k in args.to_dict()}


def mapping_table():
    """data/math/README.md's mapping table: rows of (Config fields named in column 1, GRPOConfig
    fields named in column 2)."""
    page = open(TABLE_PAGE, encoding="utf-8").read()
    start = page.index("| drgrpo `Config` | TRL `GRPOConfig`")
    rows = []
    for line in page[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = line.split("|")[1:-1]
        names = [set(re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)", cell)) for cell in cells[:2]]
        rows.append((names[0] & CONFIG_FIELDS, names[1] & TRL_FIELDS))
    return rows


CONFIG_FIELDS = {f.name for f in dataclasses.fields(Config)}
PLACED = CONFIG_FIELDS
TRL_FIELDS = {f.name for f in dataclasses.fields(GRPOConfig)}


def test_every_mapped_field_has_the_value_of_its_config_field(recipe):
    args = as_dict(recipe.trl_config(BASE, STOP_IDS, WORLD))
    defaults = as_dict(GRPOConfig(output_dir="x", bf16=False))
    cfg = drgrpo.resolve(BASE)
    for field, value in EXPECTED.items():
        want = value(cfg)
        assert args[field] == want, f"GRPOConfig.{field} = {args[field]!r}, expected {want!r}"
        if field not in FIXED | {"bf16"}:  # bf16: TRL's default True cannot be built on a CPU
            assert want != defaults[field], (
                f"BASE must move {field} away from TRL's default {want!r}"
            )


def test_the_mapping_the_script_implements_is_the_table(recipe):
    """Change each Config field alone: the GRPOConfig fields that move are the script's real
    mapping. It must be data/math/README.md's table, and every field it reaches must have its value
    checked above."""
    base = as_dict(recipe.trl_config(BASE, STOP_IDS, WORLD))
    pairs = set(STATED_PAIRS)
    for field, value in OTHER.items():
        moved = as_dict(
            recipe.trl_config(dataclasses.replace(BASE, **{field: value}), STOP_IDS, WORLD)
        )
        pairs |= {(field, k) for k in base if moved[k] != base[k] and k not in DERIVED}
    table = mapping_table()
    documented = {(c, t) for cs, ts in table for c in cs for t in ts}
    assert pairs == documented, (
        f"(Config field, GRPOConfig field) in the script only: {sorted(pairs - documented)}; "
        f"in the table only: {sorted(documented - pairs)}"
    )
    assert {t for _, t in pairs} | FIXED == set(EXPECTED)
    fixed_rows = {t for cs, ts in table if not cs for t in ts}
    assert FIXED <= fixed_rows, "the fixed choices have a row of their own"
    # a new Config field must be placed somewhere
    assert {c for c, _ in pairs} | ELSEWHERE == PLACED
    assert {c for cs, _ in table for c in cs} == CONFIG_FIELDS, "every Config field has a table row"


def test_algo_presets_and_refusals(recipe):
    # each preset's toggles and clip ceiling, written out (not taken from drgrpo.resolve)
    presets = {"grpo": ("group", "grpo", 0.2), "dr_grpo": ("none", "dr_grpo", 0.2)}
    presets["dapo"] = ("group", "dapo", 0.28)  # DAPO's clip-higher
    assert set(presets) == set(drgrpo.ALGO_PRESETS)
    for algo, want in presets.items():
        args = recipe.trl_config(Config(algo=algo, sampler="hf", dtype="fp32"), STOP_IDS)
        assert (args.scale_rewards, args.loss_type, args.epsilon_high) == want
    # the paper's recipe on one GPU
    args = recipe.trl_config(Config(sampler="hf", dtype="fp32"), STOP_IDS)
    sizes = (args.max_completion_length, args.generation_batch_size)
    assert sizes == (3000, 128 * 8)
    assert (args.gradient_accumulation_steps, args.max_steps) == (128 // 4, 200 * 8)
    dr_grpo = dataclasses.replace(BASE, algo="dr_grpo", adv_norm="", loss_agg="")
    for bad, words in [
        (dict(loss_norm_const=100), "--loss_norm_const"),
        (dict(template="r1", sampler="hf"), "vLLM"),
        (dict(micro_batch_size=4, train_batch_size=12), "not a multiple"),
    ]:
        with pytest.raises(drgrpo.UserError, match=words):
            recipe.trl_config(dataclasses.replace(dr_grpo, **bad), STOP_IDS, WORLD)


def test_the_reward_is_drgrpos_grade_and_a_truncated_response_scores_0(recipe, monkeypatch):
    seen = []
    real = drgrpo.grade_batch

    def spy(items, workers, timeout):
        seen.append((workers, timeout))
        return real(items, workers, timeout)

    monkeypatch.setattr(drgrpo, "grade_batch", spy)
    cfg = dataclasses.replace(BASE, max_new_tokens=4, grade_workers=1, grade_timeout=9.0)
    reward, metrics = recipe.trl_reward(cfg, STOP_IDS), {}
    right = "so \\boxed{2}"
    completions = [right, right, right, "\\boxed{3}"]
    ids = [[1, 2], [1, 2, 3, 4], [1, 2, 3, 5], [1, 5]]
    golds, log = [["2"]] * 4, metrics.__setitem__
    # as TRL calls it: keywords, with the prompts and the dataset's columns
    got = reward(
        completions=completions, completion_ids=ids, golds=golds, log_metric=log, prompts=["p"] * 4
    )
    # the second is cut at max_new_tokens without a stop token: 0, whatever it says
    assert got == [1.0, 0.0, 1.0, 0.0]
    assert seen == [(1, 9.0)] and metrics == {"grade_failures": 0}
    r1 = dataclasses.replace(cfg, template="r1")
    strict = ["<think> x </think> <answer> 2 </answer>", "<think> x </think><answer> 2 </answer>"]
    # each ends in the stop string: not truncated, though 4 tokens long
    assert recipe.trl_reward(r1, STOP_IDS)(strict, [[1, 2, 3, 4]] * 2, [["2"]] * 2) == [1.0, 0.0]
    lax = recipe.trl_reward(dataclasses.replace(r1, r1_strict=False), STOP_IDS)
    assert lax(strict, [[1, 2, 3, 4]] * 2, [["2"]] * 2) == [1.0, 1.0]


def test_the_dataset_is_drgrpos_data_with_its_template(recipe, tiny):
    cfg = Config(train_data=tiny["data"], template="qwen_math")
    rows = drgrpo.load_jsonl(tiny["data"])
    ds = recipe.trl_dataset(cfg)
    assert ds["prompt"] == [drgrpo.apply_template("qwen_math", r["problem"]) for r in rows]
    assert ds["golds"] == [r["golds"] for r in rows]


def test_one_trl_step_on_the_cpu_with_drgrpos_reward(tiny, tmp_path):
    """The script as a user runs it, from another directory (it finds drgrpo.py itself), in its own
    process (the grading workers re-import it), one step."""
    out = tmp_path / "run"
    paths = ["--model", tiny["model"], "--train_data", tiny["data"], "--out_dir", str(out)]
    sizes = "--group_size 4 --prompts_per_rollout 2 --max_new_tokens 16 --train_batch_size 8"
    rest = "--micro_batch_size 4 --steps 1 --lr 1e-3 --grade_workers 2 --sampler hf"
    cmd = [sys.executable, SCRIPT, *paths, *sizes.split(), *rest.split()]
    cmd += ["--gradient_checkpointing", "false"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    step = state["log_history"][0]
    shown = "loss grad_norm reward reward_std grade_failures completions/mean_length"
    shown += " completions/clipped_ratio frac_reward_zero_std"
    print({k: step[k] for k in shown.split()})
    assert state["global_step"] == 1 and step["grade_failures"] == 0
    # the tiny model's coin flips: mixed rewards, a push
    assert 0 < step["reward"] < 1 and step["grad_norm"] > 0
    from safetensors.torch import load_file

    before = load_file(os.path.join(tiny["model"], "model.safetensors"))
    after = load_file(str(out / "checkpoint-1" / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)

"""drgrpo's objective, data, prompt template and reward on TRL's GRPOTrainer, on as many GPUs as
`accelerate launch` starts. Its flags are drgrpo.py's own (python drgrpo.py train --help), plus
--vllm_mode. data/math/README.md maps every Config field to its TRL (and verl) counterpart.

    python data/math/train_trl.py --model Qwen/Qwen2.5-Math-1.5B --out_dir runs/trl-1.5b
    accelerate launch --config_file $CFG/zero3.yaml --num_processes 8 data/math/train_trl.py ...
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# TRL, transformers, datasets and torch are imported where used: each grading worker process
# re-imports this script (Python's forkserver), and must be ready well within --grade_timeout.
import drgrpo  # noqa: E402  (after the line above, which puts the project root on the path)

TRL_LOSS = {
    "seq_mean_token_sum_norm": "dr_grpo",
    "seq_mean_token_mean": "grpo",
    "token_mean": "dapo",
}


def trl_config(cfg, stop_ids, world_size=1, vllm_mode="colocate"):
    """drgrpo's Config -> TRL's GRPOConfig: the same objective and batch sizes, on `world_size`
    GPUs."""
    import torch
    from trl import GRPOConfig

    cfg = drgrpo.resolve(cfg)  # fills adv_norm, loss_agg and loss_norm_const from --algo
    rollout = cfg.prompts_per_rollout * cfg.group_size
    per_pass = cfg.micro_batch_size * world_size
    if cfg.train_batch_size % per_pass:
        raise drgrpo.UserError(
            f"--train_batch_size {cfg.train_batch_size} is not a multiple of --micro_batch_size "
            f"{cfg.micro_batch_size} x {world_size} GPUs"
        )
    if cfg.loss_agg == "seq_mean_token_sum_norm" and cfg.loss_norm_const != cfg.max_new_tokens:
        raise drgrpo.UserError("--loss_norm_const: TRL's dr_grpo divides by --max_new_tokens")
    use_vllm = cfg.sampler != "hf"
    if drgrpo.STOP_STRINGS[cfg.template] and not use_vllm:
        raise drgrpo.UserError(
            f"--template {cfg.template}: TRL stops at a string only with vLLM (--sampler vllm)"
        )
    updates = rollout // cfg.train_batch_size * cfg.epochs_per_rollout  # per drgrpo step
    if use_vllm:  # drgrpo's stop tokens, and r1's stop string, kept in the output as drgrpo does
        stops = drgrpo.STOP_STRINGS[cfg.template] or None
        generation_kwargs = {
            "stop_token_ids": stop_ids,
            "stop": stops,
            "include_stop_str_in_output": True,
        }
    else:
        generation_kwargs = None
    on_cuda = cfg.dtype == "auto" and torch.cuda.is_available()
    return GRPOConfig(
        output_dir=cfg.out_dir,
        seed=cfg.seed,
        max_steps=cfg.steps * updates,
        # group | batch | none: the same names, the same formulas
        scale_rewards=cfg.adv_norm,
        # dr_grpo divides by max_completion_length, as drgrpo does by default
        loss_type=TRL_LOSS[cfg.loss_agg],
        num_generations=cfg.group_size,
        generation_batch_size=rollout,  # prompts_per_rollout x G, over all GPUs
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        adam_beta1=drgrpo.ADAM["betas"][0],  # drgrpo's fixed Adam (the paper's)
        adam_beta2=drgrpo.ADAM["betas"][1],
        weight_decay=drgrpo.ADAM["weight_decay"],
        max_grad_norm=cfg.grad_clip,
        per_device_train_batch_size=cfg.micro_batch_size,  # memory only, as in drgrpo
        # -> train_batch_size responses an optimizer step
        gradient_accumulation_steps=cfg.train_batch_size // per_pass,
        num_iterations=cfg.epochs_per_rollout,
        epsilon=cfg.clip_eps_low,
        epsilon_high=cfg.clip_eps_high,
        beta=cfg.kl_beta,  # k3 KL to the start model, added per token before aggregation
        mask_truncated_completions=False,  # drgrpo keeps a truncated response, with reward 0
        bf16=cfg.dtype == "bf16" or on_cuda,  # autocast over fp32 master weights
        gradient_checkpointing=cfg.gradient_checkpointing,
        save_steps=cfg.save_every * updates or cfg.steps * updates,
        save_total_limit=cfg.keep_checkpoints or None,
        use_vllm=use_vllm,
        vllm_mode=vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory,
        # drgrpo's sleep/wake around the update
        vllm_enable_sleep_mode=use_vllm and vllm_mode == "colocate",
        # drgrpo's pi_old is the trainer's: no correction for the sampler's log-probs
        vllm_importance_sampling_correction=False,
        generation_kwargs=generation_kwargs,
        logging_steps=1,
        report_to="none",
    )


def trl_reward(cfg, stop_ids):
    """drgrpo's verifier as a TRL reward function: grade() in worker processes, a truncated
    response scores 0."""
    stops = tuple(drgrpo.STOP_STRINGS[cfg.template])

    def drgrpo_reward(completions, completion_ids, golds, log_metric=None, **_):
        # drgrpo's rule: truncated = cut off at max_new_tokens, not stopped
        truncated = [
            len(ids) >= cfg.max_new_tokens and ids[-1] not in stop_ids and not text.endswith(stops)
            for text, ids in zip(completions, completion_ids, strict=True)
        ]
        items = [
            (text, gold, cfg.template, cut, cfg.r1_strict)
            for text, gold, cut in zip(completions, golds, truncated, strict=True)
        ]
        grades, failed = drgrpo.grade_batch(items, cfg.grade_workers, cfg.grade_timeout)
        if log_metric:
            log_metric("grade_failures", failed)
        return grades

    return drgrpo_reward


def trl_dataset(cfg):
    """drgrpo's JSONL (blank answers and repeats skipped) with drgrpo's template applied: TRL's
    `prompt` column, and the golds for the reward."""
    from datasets import Dataset

    rows = drgrpo.load_jsonl(cfg.train_data)
    return Dataset.from_list(
        [
            {"prompt": drgrpo.apply_template(cfg.template, r["problem"]), "golds": r["golds"]}
            for r in rows
        ]
    )


def main(argv=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOTrainer

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--vllm_mode", default="colocate", choices=["colocate", "server"])
    ours, theirs = p.parse_known_args(argv)
    cfg = drgrpo.resolve(drgrpo.parse_args(["train", *theirs])[1])
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    # fp32 master weights; TRL ends (and masks) a completion at each of drgrpo's stop tokens: EOS,
    # Qwen's <|im_end|> and <|endoftext|>, and the EOS ids of the model's generation config
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    stop_ids = drgrpo.stop_token_ids(tokenizer, model)
    args = trl_config(cfg, stop_ids, int(os.environ.get("WORLD_SIZE", 1)), ours.vllm_mode)
    model.generation_config.eos_token_id = stop_ids
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=trl_reward(cfg, stop_ids),
        args=args,
        train_dataset=trl_dataset(cfg),
    )
    last = get_last_checkpoint(cfg.out_dir) if os.path.isdir(cfg.out_dir) else None
    trainer.train(resume_from_checkpoint={"auto": last, "never": None}.get(cfg.resume, cfg.resume))
    return trainer


if __name__ == "__main__":
    try:
        main()
    except drgrpo.UserError as e:  # a bad flag or file: one line and exit code 2, as drgrpo.py
        print(f"train_trl: error: {e}", file=sys.stderr)
        sys.exit(2)

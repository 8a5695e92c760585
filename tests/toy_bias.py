"""A toy that shows GRPO's two biases happening, in seconds, with drgrpo.py's
own advantage and loss functions.

The policy is plain torch, no language model. A response to question q is a sequence of tokens:
  token 1      right or wrong          p(right) = sigmoid(a_q)
                                       (each question has its own difficulty a_q)
  tokens 2..L  "continue" ... "stop"   p(stop) = sigmoid(s_right) after a right first token,
                                       sigmoid(s_wrong) after a wrong one; a response that reaches
                                       MAX_LEN tokens stops there.
The reward is 1 for right, 0 for wrong: it does not depend on the length. An unbiased
policy gradient leaves the two length parameters where they are (in expectation); any
drift is the optimiser's own doing.

Run `python tests/toy_bias.py` (or `make bias`) for the table and figure;
tests/test_toy_bias.py asserts them.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from drgrpo import ALGO_PRESETS, aggregate_loss, group_advantages, ppo_token_loss  # noqa: E402

# longest response; also Dr. GRPO's constant normaliser C, as max_new_tokens is in drgrpo.py
MAX_LEN = 40
START_STOP_LOGIT = -2.0  # p(stop) = 0.12 per token: both kinds of response start ~8 tokens long


def expected_length(stop_logit):
    """Mean length of a response whose every token after the first stops
    with p = sigmoid(stop_logit)."""
    p = torch.sigmoid(torch.as_tensor(stop_logit, dtype=torch.float64))
    lengths = torch.arange(2, MAX_LEN + 1, dtype=torch.float64)
    prob = (1 - p) ** (lengths - 2) * p  # stop exactly at this length
    prob[-1] = (1 - p) ** (MAX_LEN - 2)  # forced stop at MAX_LEN
    return float((lengths * prob).sum())


def sample_batch(a, s_right, s_wrong, group_size, gen):
    """G responses per question -> per-token log-probs [N, MAX_LEN] (differentiable),
    token mask, rewards [Q, G]."""
    n_q = a.numel()
    right = torch.rand(n_q, group_size, generator=gen) < torch.sigmoid(a.detach()).unsqueeze(1)
    stop_p = torch.where(right, torch.sigmoid(s_right.detach()), torch.sigmoid(s_wrong.detach()))
    u = torch.rand(n_q, group_size, generator=gen).clamp_min(1e-12)
    # geometric: "continue" tokens before "stop"
    n_continue = torch.floor(torch.log(u) / torch.log1p(-stop_p))
    length = (2 + n_continue).clamp(max=MAX_LEN).long().flatten()
    right = right.flatten()
    pos = torch.arange(MAX_LEN).unsqueeze(0)
    mask = (pos < length.unsqueeze(1)).float()
    a_rep = a.repeat_interleave(group_size)
    first = torch.where(
        right, torch.nn.functional.logsigmoid(a_rep), torch.nn.functional.logsigmoid(-a_rep)
    )
    s = torch.where(right, s_right, s_wrong)
    log_continue, log_stop = torch.nn.functional.logsigmoid(-s), torch.nn.functional.logsigmoid(s)
    is_stop = (pos == (length - 1).unsqueeze(1)) & (length < MAX_LEN).unsqueeze(1)
    later = torch.where(is_stop, log_stop.unsqueeze(1), log_continue.unsqueeze(1))
    logp = torch.cat([first.unsqueeze(1), later[:, 1:]], dim=1) * mask
    return logp, mask, right.float().view(n_q, group_size)


def train(algo, steps=300, n_questions=128, group_size=8, lr=0.01, seed=0):
    """Train the toy with drgrpo.py's advantage and aggregation for `algo`;
    returns the history per step."""
    adv_norm, loss_agg, _ = ALGO_PRESETS[algo]
    gen = torch.Generator().manual_seed(seed)
    a = torch.linspace(-2.5, 2.5, n_questions).requires_grad_()  # pass rates from 8% to 92%
    s_right = torch.tensor(START_STOP_LOGIT, requires_grad=True)
    s_wrong = torch.tensor(START_STOP_LOGIT, requires_grad=True)
    # as drgrpo.py: same lr for both
    opt = torch.optim.Adam([a, s_right, s_wrong], lr=lr, betas=(0.9, 0.95))
    history = []
    for _ in range(steps):
        logp, mask, rewards = sample_batch(a, s_right, s_wrong, group_size, gen)
        adv = group_advantages(rewards, adv_norm).flatten().unsqueeze(1)
        loss_tok, _ = ppo_token_loss(logp, logp.detach(), adv, 0.2, 0.2)
        loss = aggregate_loss(loss_tok, mask, loss_agg, mask.shape[0], mask.sum().item(), MAX_LEN)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(
            {
                "len_correct": expected_length(s_right.item()),
                "len_incorrect": expected_length(s_wrong.item()),
                "accuracy": torch.sigmoid(a).mean().item(),
            }
        )
    return history


def question_weights(group_size=8, algo="grpo"):
    """Effective update weight of one question as a function of its pass rate: the size of the
    gradient on its right/wrong logit, for a group with k of G right (k = 1..G-1), through
    drgrpo.py's loss. -> {k/G: weight}"""
    adv_norm, loss_agg, _ = ALGO_PRESETS[algo]
    out = {}
    for k in range(1, group_size):
        # p(right) = 0.5: the score function is +-0.5 per response
        a = torch.zeros((), requires_grad=True)
        rewards = torch.tensor([[1.0] * k + [0.0] * (group_size - k)])
        logp = torch.where(
            rewards.flatten().bool(),
            torch.nn.functional.logsigmoid(a),
            torch.nn.functional.logsigmoid(-a),
        ).unsqueeze(1)  # one-token responses
        adv = group_advantages(rewards, adv_norm).flatten().unsqueeze(1)
        loss_tok, _ = ppo_token_loss(logp, logp.detach(), adv, 0.2, 0.2)
        aggregate_loss(
            loss_tok, torch.ones_like(logp), loss_agg, group_size, group_size, 1
        ).backward()
        out[k / group_size] = abs(a.grad.item())
    return out


def main(figure="runs/toy_bias.png"):
    runs = {algo: train(algo) for algo in ("grpo", "dr_grpo")}
    print(
        f"toy length bias: mean response length (tokens), "
        f"start {expected_length(START_STOP_LOGIT):.1f} for both"
    )
    print(f"{'algo':>8s} | {'correct: start -> end':>22s} | {'incorrect: start -> end':>24s}")
    for algo, h in runs.items():
        print(
            f"{algo:>8s} | {h[0]['len_correct']:10.1f} -> {h[-1]['len_correct']:6.1f}    | "
            f"{h[0]['len_incorrect']:11.1f} -> {h[-1]['len_incorrect']:6.1f}"
        )
    weights = {algo: question_weights(algo=algo) for algo in ("grpo", "dr_grpo")}
    print("\ntoy difficulty bias: update weight of a question vs its pass rate (k of 8 right)")
    print(f"{'pass rate':>9s} | {'GRPO':>6s} | {'Dr. GRPO':>8s} | GRPO / Dr. GRPO")
    for p in weights["grpo"]:
        g, d = weights["grpo"][p], weights["dr_grpo"][p]
        print(f"{p:9.3f} | {g:6.3f} | {d:8.3f} | {g / d:6.2f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no figure; `pip install matplotlib`)")
        return runs, weights
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for algo, style in (("grpo", "-"), ("dr_grpo", "--")):
        h = runs[algo]
        left.plot([x["len_correct"] for x in h], "g" + style, label=f"{algo}: correct")
        left.plot([x["len_incorrect"] for x in h], "r" + style, label=f"{algo}: incorrect")
        ps = list(weights[algo])
        right.plot(ps, [weights[algo][p] / weights[algo][0.5] for p in ps], "o" + style, label=algo)
    left.set(
        xlabel="RL step",
        ylabel="mean response length (tokens)",
        title="length bias: reward ignores length, GRPO does not",
    )
    right.set(
        xlabel="pass rate of the question in its group (k / 8)",
        ylabel="update weight, relative to a 4-of-8 question",
        title="difficulty bias: GRPO up-weights easy and hard questions",
    )
    left.legend(), right.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(figure) or ".", exist_ok=True)
    fig.savefig(figure, dpi=120)
    print(f"figure: {figure}")
    return runs, weights


if __name__ == "__main__":
    main(*sys.argv[1:])

"""The training loop and the policy update do what their flags say, checked by behaviour against
references computed here: pi_old kept for a rollout's later optimizer steps, the KL term in the
gradient, --epochs_per_rollout, --adv_norm batch, gradient clipping, a new sampling draw every
step, and each response trained with its own advantage."""

import copy
import json
import random

import pytest
import torch
from test_e2e import tiny_cfg
from test_update_levers import plain_logprobs
from test_update_speed import flat_grads, random_qwen, rollout

import drgrpo
from drgrpo import Config

C = 16  # max_new_tokens, and so Dr. GRPO's constant C, in the unit tests below


def unit_cfg(**kw):
    """A rollout of 3 prompts x G=4 (rollout()'s), one micro-batch per optimizer step."""
    base = dict(
        prompts_per_rollout=3,
        group_size=4,
        train_batch_size=12,
        micro_batch_size=12,
        max_new_tokens=C,
        grad_clip=1e9,
    )
    return drgrpo.resolve(Config(**{**base, **kw}))


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_later_optimizer_steps_of_a_rollout_use_the_sampling_policy_as_pi_old():
    """Two optimizer steps on one rollout: the second step's PPO ratio is pi_theta over the policy
    that *sampled* the rollout, so it has moved from 1 and the clip acts. If pi_old were taken
    from the already-updated weights, the ratio would stay 1 and the clip would never protect the
    second step from a too-large move."""
    model, batch = random_qwen(), rollout()
    start = copy.deepcopy(model)
    cfg = unit_cfg(train_batch_size=6, micro_batch_size=6, clip_eps_low=0.01, clip_eps_high=0.01)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stats = drgrpo.update_policy(cfg, batch, random.Random(0), model, model, None, optimizer, 0)
    assert len(stats) == 2
    assert stats[0]["clip_frac"] == 0  # the first step: pi_theta is pi_old, the ratio is 1
    assert stats[1]["clip_frac"] > 0, "second step: ratio exactly 1, pi_old is not the sampler's"
    # pi_old of every trained response is the start policy's log-prob, computed here alone
    trained = [s for s in batch if s.advantage != 0]
    expected, _ = plain_logprobs(start, trained)
    for s, lp in zip(trained, expected, strict=True):
        assert torch.allclose(s.old_logp, lp.detach(), atol=1e-5)


@pytest.mark.parametrize("loss_agg", drgrpo.LOSS_AGGS)
def test_kl_term_alone_gives_the_gradient_of_beta_times_the_k3_kl(loss_agg):
    """Zero advantages and --kl_beta 0.5 against a reference model that differs from the policy:
    the applied update (SGD, lr 1) is exactly the gradient of 0.5 x the k3 KL, aggregated as
    --loss_agg says, and the logged kl is its mean over tokens. A KL that is logged but left out
    of the loss would let the policy drift from the reference unchecked."""
    model, batch = random_qwen(seed=0), rollout()
    ref_model = random_qwen(seed=1)
    with torch.no_grad():  # sharper: log-prob gaps of order 1, where exp(d) is far from 1 + d
        ref_model.lm_head.weight.mul_(8)
    for s in batch:
        s.advantage = 0.0
    beta = 0.5
    # the reference gradient: autograd through the k3 estimator, exp(d) - d - 1, d = ref - logp
    ref = copy.deepcopy(model)
    logp, _ = plain_logprobs(ref, batch)
    ref_logp, _ = plain_logprobs(ref_model, batch)
    kl = [
        torch.exp(r.detach() - p) - (r.detach() - p) - 1
        for p, r in zip(logp, ref_logp, strict=True)
    ]
    n_tokens = sum(len(k) for k in kl)
    if loss_agg == "seq_mean_token_mean":
        loss = sum(k.mean() for k in kl) / len(batch)
    elif loss_agg == "token_mean":
        loss = sum(k.sum() for k in kl) / n_tokens
    else:
        loss = sum(k.sum() for k in kl) / (C * len(batch))
    (beta * loss).backward()

    cfg = unit_cfg(loss_agg=loss_agg, kl_beta=beta)
    before = params(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = drgrpo.update_policy(
        cfg, batch, random.Random(0), model, model, ref_model, optimizer, 0
    )
    step = before - params(model)
    assert step.abs().max().item() > 0, "zero advantages: only the KL term can move the weights"
    assert torch.allclose(step, flat_grads(ref), atol=1e-7, rtol=1e-4)
    expected_kl = (sum(k.sum() for k in kl) / n_tokens).item()
    assert expected_kl > 0.1  # the two models really differ
    assert stats[0]["kl"] == pytest.approx(expected_kl, rel=1e-5)
    assert stats[0]["trained_frac"] == 1  # no response is skipped when the KL term is on


def test_epochs_per_rollout_passes_over_every_sample():
    """--epochs_per_rollout 3 with 2 optimizer batches per rollout: 6 optimizer steps, and every
    response is trained on in 3 of them."""
    model, batch = random_qwen(), rollout()
    cfg = unit_cfg(train_batch_size=6, micro_batch_size=6, epochs_per_rollout=3)
    seen = []
    real = drgrpo.optimizer_step

    def recording_step(model, optimizer, batch, *a, **kw):
        seen.extend(id(s) for s in batch)
        return real(model, optimizer, batch, *a, **kw)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(drgrpo, "optimizer_step", recording_step)
        stats = drgrpo.update_policy(cfg, batch, random.Random(0), model, model, None, optimizer, 0)
    assert len(stats) == 6, f"{len(stats)} optimizer steps, expected 3 epochs x 2 batches"
    assert sorted(seen) == sorted(id(s) for s in batch for _ in range(3))


def test_gradient_clipping_bounds_the_applied_update():
    """--grad_clip 0.5 with a huge gradient (advantages x 1e4): with SGD at lr 1 the applied
    update is the clipped gradient, of norm 0.5, while grad_norm logs the norm before clipping.
    Without the clip one bad batch would throw the weights far away."""
    model, batch = random_qwen(), rollout()
    for s in batch:
        s.advantage *= 1e4
    cfg = unit_cfg(grad_clip=0.5)
    before = params(model)
    stats = drgrpo.optimizer_step(
        model, torch.optim.SGD(model.parameters(), lr=1.0), batch, cfg, 0, None
    )
    update_norm = (before - params(model)).norm().item()
    assert stats["grad_norm"] > 100  # the gradient was huge ...
    assert 0.5 * 0.999 <= update_norm <= 0.5 * 1.0001, f"update norm {update_norm}, clip 0.5"


def test_each_training_step_draws_new_samples(tiny, tmp_path, monkeypatch):
    """Three steps of train() on one prompt, 16 responses a step, with lr 0 so the policy never
    changes: each step must still sample with a different seed and draw different responses.
    The same draw every step would train on one fixed set of responses, over and over."""
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"problem": "Pick 1 or 2!", "answer": "1"}) + "\n")
    seeds, draws = [], []
    real = drgrpo.HFSampler.generate

    def recording_generate(self, prompts, n, max_new_tokens, **kw):
        groups = real(self, prompts, n, max_new_tokens, **kw)
        seeds.append(kw["seed"])
        draws.append([c.token_ids for g in groups for c in g])
        return groups

    monkeypatch.setattr(drgrpo.HFSampler, "generate", recording_generate)
    cfg = tiny_cfg(
        tiny,
        train_data=str(data),
        out_dir=str(tmp_path / "run"),
        prompts_per_rollout=1,
        group_size=16,
        lr=0.0,
        steps=3,
    )
    drgrpo.train(cfg)
    assert len(seeds) == 3 and len(set(seeds)) == 3, f"sampling seeds {seeds}"
    assert draws[0] != draws[1] and draws[1] != draws[2] and draws[0] != draws[2]


def test_each_response_is_trained_with_its_own_advantage(tiny, tmp_path, monkeypatch):
    """One train() step with rewards that differ within every group (a stand-in grader): every
    response reaches the update with the advantage of its own reward, reward minus its group's
    mean (Dr. GRPO, --adv_norm none), computed here by hand. An advantage paired with the wrong
    response reinforces the wrong answers."""
    reward_of = {}  # id(completion) -> (its reward, its group's rewards)

    def fake_grade_groups(cfg, rows, groups):
        grades = [[((7 * i + 3 * j) % 5) / 4 for j in range(len(g))] for i, g in enumerate(groups)]
        for g, rewards in zip(groups, grades, strict=True):
            for c, r in zip(g, rewards, strict=True):
                reward_of[id(c)] = (r, rewards)
        return grades, 0

    received = []
    real = drgrpo.update_policy

    def recording_update(cfg, samples, *a, **kw):
        received.extend((id(s.completion), s.reward, s.advantage) for s in samples)
        return real(cfg, samples, *a, **kw)

    monkeypatch.setattr(drgrpo, "grade_groups", fake_grade_groups)
    monkeypatch.setattr(drgrpo, "update_policy", recording_update)
    cfg = tiny_cfg(tiny, out_dir=str(tmp_path / "run"), steps=1, lr=1e-3)
    drgrpo.train(cfg)
    assert len(received) == 16  # 4 prompts x G=4, none empty
    for key, reward, advantage in received:
        own, group = reward_of[key]
        assert reward == own
        message = f"reward {own} in a group with rewards {group}: advantage {advantage}"
        assert advantage == pytest.approx(own - sum(group) / len(group), abs=1e-6), message

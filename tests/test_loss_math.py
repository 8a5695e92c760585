"""The two biases of GRPO (paper Sec. 3), shown on toy batches with
autograd and hand-computed numbers."""

import math

import pytest
import torch

from drgrpo import LOSS_AGGS, aggregate_loss, group_advantages, ppo_token_loss

GRPO, DAPO, DR = "seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"


def per_token_grad(lengths, advantages, loss_agg, norm_const=10):
    """d loss / d log pi(token) for a batch of responses at ratio 1 (fresh samples):
    the per-token update weight."""
    T = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    logp = torch.zeros(len(lengths), T, requires_grad=True)
    adv = torch.tensor(advantages).unsqueeze(1)
    loss_tok, _ = ppo_token_loss(logp, logp.detach(), adv, 0.2, 0.2)
    aggregate_loss(loss_tok, mask, loss_agg, len(lengths), sum(lengths), norm_const).backward()
    return logp.grad


def test_length_bias_4_vs_7_tokens():
    # Two correct responses (advantage +1) of 4 and 7 tokens; gradient descent moves log pi by -grad
    g = per_token_grad([4, 7], [1.0, 1.0], GRPO)
    assert g[0, :4].tolist() == pytest.approx([-1 / 8] * 4)  # 1/B * 1/|o_i| = 1/2 * 1/4
    assert g[1, :7].tolist() == pytest.approx([-1 / 14] * 7)  # 1/2 * 1/7
    assert g[0, 0] / g[1, 0] == pytest.approx(7 / 4)  # ratio 1/4 : 1/7
    assert g[0, 4:].abs().sum() == 0  # padding gets nothing
    d = per_token_grad([4, 7], [1.0, 1.0], DR, norm_const=10)
    # 1/B * 1/C = 1/2 * 1/10, whatever the length
    assert d[0, :4].tolist() == pytest.approx([-1 / 20] * 4)
    assert d[1, :7].tolist() == pytest.approx([-1 / 20] * 7)
    t = per_token_grad([4, 7], [1.0, 1.0], DAPO)
    # 1 / (4 + 7) for every token in the batch
    assert t[0, :4].tolist() == pytest.approx([-1 / 11] * 4)
    assert t[1, :7].tolist() == pytest.approx([-1 / 11] * 7)


def test_grpo_prefers_short_correct_and_long_wrong_dr_grpo_does_not():
    # Batch: short correct, long correct, short wrong, long wrong (advantages +1, +1, -1, -1).
    lengths, adv = [3, 12, 3, 12], [1.0, 1.0, -1.0, -1.0]
    g = per_token_grad(lengths, adv, GRPO)
    push_up_short, push_up_long = -g[0, 0].item(), -g[1, 0].item()
    push_down_short, push_down_long = g[2, 0].item(), g[3, 0].item()
    # short correct responses are reinforced 4x harder
    assert push_up_short == pytest.approx(4 * push_up_long)
    # long wrong responses are penalised 4x less
    assert push_down_long == pytest.approx(push_down_short / 4)
    d = per_token_grad(lengths, adv, DR)
    # 1/B * 1/C = 1/4 * 1/10 for every token
    assert torch.allclose(d[0, :3].abs(), torch.full((3,), 1 / 40))
    assert torch.allclose(d[3, :12].abs(), torch.full((12,), 1 / 40))
    # the penalty of a whole wrong response grows with its length under Dr. GRPO, flat under GRPO
    assert g[3].sum() == pytest.approx(g[2].sum())
    assert d[3].sum() == pytest.approx(4 * d[2].sum())


def test_std_normalisation_upweights_easy_and_hard_questions():
    # 3 questions, G=8: solved 1/8 (hard), 4/8, 7/8 (easy) times.
    rewards = torch.tensor([[1.0] + [0.0] * 7, [1.0] * 4 + [0.0] * 4, [1.0] * 7 + [0.0]])
    grpo, dr = group_advantages(rewards, "group"), group_advantages(rewards, "none")
    scale = (grpo / dr)[:, 0]  # GRPO = Dr. GRPO x 1/std: the effective per-question weight
    std_1_of_8 = math.sqrt(1 / 8 * 7 / 8 * 8 / 7)  # unbiased std of seven 0s and one 1 = sqrt(1/8)
    std_4_of_8 = math.sqrt(1 / 4 * 8 / 7)
    assert scale.tolist() == pytest.approx(
        [1 / std_1_of_8, 1 / std_4_of_8, 1 / std_1_of_8], rel=1e-6
    )
    # ~1.51x more weight, hard and easy
    assert scale[0] / scale[1] == pytest.approx(math.sqrt(16 / 7), rel=1e-6)
    # Dr. GRPO: a group's total |advantage| is proportional to its reward variance; no reweighting
    assert dr.abs().sum(1).tolist() == pytest.approx([1.75, 4.0, 1.75])


@pytest.mark.parametrize("adv_norm", ["group", "none"])
@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_all_equal_groups_give_exactly_zero_gradient(adv_norm, loss_agg):
    for fill in (0.0, 1.0):
        rewards = torch.full((2, 8), fill)
        adv = group_advantages(rewards, adv_norm)
        assert not torch.isnan(adv).any() and (adv == 0).all()
        g = per_token_grad([5, 9] * 8, adv.flatten().tolist(), loss_agg)
        assert not torch.isnan(g).any() and (g == 0).all()
    # a mixed batch: the all-equal group still contributes exactly nothing
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]), adv_norm)
    assert (adv[0] == 0).all() and (adv[1] != 0).all()


def test_dr_grpo_advantage_is_rloo_times_g_minus_1_over_g():
    torch.manual_seed(0)
    for G in (2, 4, 8, 16):
        rewards = torch.randint(0, 2, (64, G)).float()
        # leave-one-out baseline
        rloo = rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
        assert torch.allclose(group_advantages(rewards, "none"), rloo * (G - 1) / G, atol=1e-6)


def test_group_advantage_hand_computed():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "group")
    std = math.sqrt(3 / 16 * 4 / 3)  # unbiased std of (1, 0, 0, 0) = 0.5
    assert adv[0].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std])


def test_ppo_clip_stops_gradient_outside_the_trust_region():
    # ratios e^0.5=1.65, e^-0.5=0.61, e^0.1=1.1
    logp = torch.tensor([0.5, -0.5, 0.1], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0])
    loss, clipped = ppo_token_loss(logp, torch.zeros(3), adv, 0.2, 0.2)
    loss.sum().backward()
    assert clipped.tolist() == [1.0, 1.0, 0.0]
    # already moved past 1 +/- eps in the advantage's direction
    assert logp.grad[:2].tolist() == [0.0, 0.0]
    assert logp.grad[2].item() == pytest.approx(-math.exp(0.1))
    # clip-higher (DAPO): a larger ceiling lets the first token keep learning
    logp.grad = None
    loss, clipped = ppo_token_loss(logp, torch.zeros(3), adv, 0.2, 0.8)
    loss.sum().backward()
    assert clipped[0] == 0 and logp.grad[0] != 0


def test_ppo_clip_keeps_the_gradient_when_the_ratio_moved_against_the_advantage():
    """Eq. 1's min is the pessimistic bound: a token whose ratio fell below 1 - eps although its
    advantage is positive (or rose above 1 + eps with a negative one) keeps its full gradient."""
    logp = torch.tensor([-0.7, 0.7], requires_grad=True)  # ratios e^-0.7 = 0.50, e^0.7 = 2.01
    adv = torch.tensor([1.0, -1.0])
    loss, clipped = ppo_token_loss(logp, torch.zeros(2), adv, 0.2, 0.2)
    loss.sum().backward()
    assert clipped.tolist() == [0.0, 0.0]
    assert logp.grad.tolist() == pytest.approx([-math.exp(-0.7), math.exp(0.7)])

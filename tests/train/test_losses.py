"""Losses against hand-worked numbers (derivations in the docstrings) and explicit reference loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omnivision.train.losses import (
    IGNORE_INDEX,
    dpo_loss,
    label_counts,
    lm_loss,
    lm_loss_sum,
    next_token_targets,
    scored_sequence_logps,
    sequence_logps,
    siglip_loss,
    token_loss,
)

X = IGNORE_INDEX


def _loop_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Reference: for every t with labels[b, t+1] labelled, -log softmax(logits[b, t])[labels[b, t+1]]."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target != X:
                total -= float(torch.log_softmax(logits[b, t].double(), -1)[target])
                count += 1
    return total, count


# --- lm_loss -------------------------------------------------------------------------------------

def test_lm_loss_uniform_logits_is_log_vocab() -> None:
    """Zero logits over V=5 give every token probability 1/5, so each counted token costs log 5.

    labels [X, 1, 2, X]: the shift drops column 0 and position 3 is ignored, leaving 2 tokens:
    sum = 2 log 5 = 3.2188758, count = 2, mean = log 5 = 1.6094379.
    """
    logits = torch.zeros(1, 4, 5)
    labels = torch.tensor([[X, 1, 2, X]])
    total, count = lm_loss_sum(logits, labels)
    assert int(count) == 2
    assert float(total) == pytest.approx(3.2188758, abs=1e-6)
    assert float(lm_loss(logits, labels)) == pytest.approx(1.6094379, abs=1e-6)


def test_lm_loss_shifts_inside() -> None:
    """Logits at t that put all mass on the token at t+1 give ~0 loss; unshifted they would not."""
    ids = torch.tensor([[3, 1, 4, 1, 0, 2]])
    logits = torch.full((1, 6, 5), -30.0)
    logits[0, torch.arange(5), ids[0, 1:]] = 30.0  # position t predicts ids[t+1]
    assert float(lm_loss(logits, ids)) < 1e-6
    # the first label is never counted, whatever it is
    assert float(lm_loss(logits, torch.tensor([[X, 1, 4, 1, 0, 2]]))) < 1e-6


def test_lm_loss_matches_loop_and_ignores_minus_100() -> None:
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :4] = X
    labels[1, 5:] = X
    labels[2, ::2] = X
    want_total, want_count = _loop_nll(logits, labels)
    total, count = lm_loss_sum(logits, labels)
    assert int(count) == want_count
    assert float(total) == pytest.approx(want_total, rel=1e-5)
    assert float(lm_loss(logits, labels)) == pytest.approx(want_total / want_count, rel=1e-5)


def test_lm_loss_sum_combines_micro_batches_exactly() -> None:
    """Summing (sum, count) over micro-batches gives the full-batch token mean; averaging means does not."""
    logits = torch.randn(4, 9, 13)
    labels = torch.randint(0, 13, (4, 9))
    labels[:2, :7] = X  # the first micro-batch has far fewer labelled tokens
    parts = [lm_loss_sum(logits[i:i + 2], labels[i:i + 2]) for i in (0, 2)]
    combined = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    full = lm_loss(logits, labels)
    torch.testing.assert_close(combined, full)
    mean_of_means = sum(p[0] / p[1] for p in parts) / 2
    assert not torch.isclose(mean_of_means, full)


def test_lm_loss_without_labels_is_zero_and_differentiable() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    loss = lm_loss(logits, torch.full((2, 5), X))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and not logits.grad.isnan().any()


def test_token_loss_at_the_scored_positions_is_lm_loss() -> None:
    """The logits of the positions `next_token_targets` names, against its targets, give lm_loss of
    the full logits (the head then runs on those rows only), gradients included."""
    logits = torch.randn(3, 7, 11, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :4] = X
    labels[1, 5:] = X
    labels[2, ::2] = X
    at, targets = next_token_targets(labels)
    assert at.shape == labels.shape and not at[:, -1].any() and int(at.sum()) == int(label_counts(labels).sum())
    want_total, want_count = _loop_nll(logits.detach(), labels)
    got = token_loss(logits[at], targets)
    assert float(got) == pytest.approx(want_total / want_count, rel=1e-5)
    full = torch.autograd.grad(lm_loss(logits, labels), logits)[0]
    torch.testing.assert_close(torch.autograd.grad(got, logits)[0], full)


def test_token_loss_without_labels_is_zero_and_differentiable() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    at, targets = next_token_targets(torch.full((2, 5), X))
    loss = token_loss(logits[at], targets)
    assert float(loss.detach()) == 0.0 and targets.numel() == 0
    loss.backward()
    assert logits.grad is not None and not logits.grad.isnan().any()


def test_lm_loss_bf16_logits_reduce_in_float32() -> None:
    logits = torch.randn(2, 6, 9)
    labels = torch.randint(0, 9, (2, 6))
    out = lm_loss(logits.bfloat16(), labels)
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(float(lm_loss(logits.bfloat16().float(), labels)), rel=1e-6)


def test_lm_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="do not match"):
        lm_loss(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))


# --- sequence_logps ------------------------------------------------------------------------------

def test_sequence_logps_uniform_hand_value() -> None:
    """Zero logits over V=4: each labelled next token has log-prob -log 4 = -1.3862944.

    Row 0 labels [X, 2, 3, X, 1]: 3 tokens -> -3 log 4 = -4.1588831.
    Row 1 labels [0, X, X, X, X]: only column 0, which the shift drops -> 0.
    """
    logits = torch.zeros(2, 5, 4)
    labels = torch.tensor([[X, 2, 3, X, 1], [0, X, X, X, X]])
    out = sequence_logps(logits, labels)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([-4.1588831, 0.0], abs=1e-6)


def test_sequence_logps_matches_loop() -> None:
    logits = torch.randn(3, 6, 8)
    labels = torch.randint(0, 8, (3, 6))
    labels[:, :2] = X
    out = sequence_logps(logits, labels)
    for b in range(3):
        total, _ = _loop_nll(logits[b:b + 1], labels[b:b + 1])
        assert float(out[b]) == pytest.approx(-total, rel=1e-5)


# --- DPO -----------------------------------------------------------------------------------------

def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_scored_sequence_logps_is_sequence_logps() -> None:
    logits = torch.randn(3, 8, 10, requires_grad=True)
    labels = torch.randint(0, 10, (3, 8))
    labels[0, :5] = X
    labels[1] = X  # a sequence with nothing scored: 0
    labels[2, 1::3] = X
    at, targets = next_token_targets(labels)
    got = scored_sequence_logps(logits[at], targets, at)  # [3]
    want = sequence_logps(logits, labels)
    torch.testing.assert_close(got, want)
    assert float(got[1]) == 0.0
    weights = torch.tensor([1.0, 2.0, -1.0])
    torch.testing.assert_close(torch.autograd.grad((got * weights).sum(), logits)[0],
                               torch.autograd.grad((want * weights).sum(), logits)[0])


def test_dpo_hand_worked_example() -> None:
    """beta = 0.5, policy chosen pc = -1, policy rejected pr = -3, reference rc = rr = -2.

    chosen reward   = beta (pc - rc) = 0.5 * (-1 - -2) =  0.5
    rejected reward = beta (pr - rr) = 0.5 * (-3 - -2) = -0.5
    margin = 0.5 - (-0.5) = 1.0
    loss = -log sigmoid(1) = log(1 + e^-1) = log(1.36787944) = 0.31326169
    accuracy = 1 (0.5 > -0.5).
    """
    out = dpo_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0), beta=0.5)
    from_formula = -math.log(1.0 / (1.0 + math.exp(-0.5 * ((-1 - -2) - (-3 - -2)))))
    assert float(out.loss) == pytest.approx(from_formula, abs=1e-6)
    assert float(out.loss) == pytest.approx(0.31326169, abs=1e-7)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5])
    assert float(out.margin) == pytest.approx(1.0)
    assert float(out.reward_accuracy) == 1.0


def test_dpo_batch_mean_hand_worked() -> None:
    """beta = 0.1, two pairs.

    Pair 1: policy equals reference on both answers -> margin 0, loss = log 2 = 0.69314718,
            rewards 0 and 0 (not strictly above: accuracy 0).
    Pair 2: pc - rc = +3, pr - rr = +1 -> margin 0.1 * (3 - 1) = 0.2,
            loss = log(1 + e^-0.2) = log(1.81873075) = 0.59813887, accuracy 1.
    Batch: loss = (0.69314718 + 0.59813887) / 2 = 0.64564302; accuracy 0.5; mean margin 0.1.
    """
    out = dpo_loss(_t(-10.0, -4.0), _t(-10.0, -6.0), _t(-10.0, -7.0), _t(-10.0, -7.0), beta=0.1)
    assert float(out.loss) == pytest.approx(0.64564302, abs=1e-7)
    expected = (math.log(2.0) + math.log(1.0 + math.exp(-0.2))) / 2
    assert float(out.loss) == pytest.approx(expected, abs=1e-6)
    assert float(out.reward_accuracy) == 0.5
    assert float(out.margin) == pytest.approx(0.1)
    assert out.chosen_rewards.tolist() == pytest.approx([0.0, 0.3])
    assert out.rejected_rewards.tolist() == pytest.approx([0.0, 0.1])


def test_dpo_gradient_direction() -> None:
    """Raising the policy's chosen log-prob lowers the loss; raising the rejected one raises it."""
    pc = _t(-5.0, -2.0).requires_grad_()
    pr = _t(-4.0, -3.0).requires_grad_()
    out = dpo_loss(pc, pr, _t(-4.5, -2.5), _t(-4.0, -2.0), beta=0.2)
    out.loss.backward()
    assert (pc.grad < 0).all()
    assert (pr.grad > 0).all()
    assert not out.chosen_rewards.requires_grad
    with torch.no_grad():
        higher = dpo_loss(pc + 0.5, pr, _t(-4.5, -2.5), _t(-4.0, -2.0), beta=0.2).loss
    assert float(higher) < float(out.loss.detach())


def test_dpo_beta_scaling() -> None:
    """beta multiplies the log-ratio margin: loss(beta, d) = loss(1, beta * d); rewards scale with beta."""
    pc, pr, rc, rr = _t(-1.0, -2.0, -3.0), _t(-2.0, -1.0, -4.0), _t(-1.5, -1.5, -3.5), _t(-1.5, -1.5, -3.5)
    a = dpo_loss(pc, pr, rc, rr, beta=0.1)
    b = dpo_loss(pc, pr, rc, rr, beta=0.4)
    torch.testing.assert_close(b.chosen_rewards, 4 * a.chosen_rewards)
    torch.testing.assert_close(b.rejected_rewards, 4 * a.rejected_rewards)
    scaled = dpo_loss(0.4 * pc, 0.4 * pr, 0.4 * rc, 0.4 * rr, beta=1.0)
    torch.testing.assert_close(b.loss, scaled.loss)
    d = (pc - rc) - (pr - rr)
    torch.testing.assert_close(b.loss, -F.logsigmoid(0.4 * d).mean())
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)


# --- SigLIP --------------------------------------------------------------------------------------

def test_siglip_hand_worked_2x2() -> None:
    """Images [[2, 0], [0, 3]] and texts [[1, 0], [0, 0.5]] normalise to the identity, so img @ txt.T = I.

    scale 1, bias 0: logits = I. Diagonal (label +1, logit 1): -log sigmoid(1) = 0.31326169 each;
    off-diagonal (label -1, logit 0): -log sigmoid(0) = log 2 = 0.69314718 each.
    loss = (2 * 0.31326169 + 2 * 0.69314718) / N=2 = 1.00640887.

    scale 10, bias -5: diagonal logit 5, off-diagonal logit -5, label * logit = 5 everywhere:
    4 * log(1 + e^-5) / 2 = 2 * 0.00671535 = 0.01343070.
    """
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    loss = siglip_loss(img, txt, torch.tensor(1.0), torch.tensor(0.0))
    assert float(loss) == pytest.approx(1.00640887, abs=1e-7)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1)) + math.log(2), abs=1e-6)
    loss = siglip_loss(img, txt, torch.tensor(10.0), torch.tensor(-5.0))
    assert float(loss) == pytest.approx(0.01343070, abs=1e-7)


def test_siglip_hand_worked_shared_positive() -> None:
    """The same 2x2 case (logits = I at scale 1, bias 0) with text 1 also true of image 0.

    Entry (0, 1) turns from label -1 to +1 at logit 0: its cost stays log 2 (sigmoid(0) = 1/2 either
    way), so the loss is unchanged, 1.00640887. At scale 10, bias -5 its logit is -5 and the cost
    becomes -log sigmoid(-5) = 5.00671535 instead of log(1 + e^-5) = 0.00671535:
    (3 * 0.00671535 + 5.00671535) / 2 = 2.51343070.
    """
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    positives = torch.tensor([[True, True], [False, True]])
    loss = siglip_loss(img, txt, torch.tensor(1.0), torch.tensor(0.0), positives)
    assert float(loss) == pytest.approx(1.00640887, abs=1e-7)
    loss = siglip_loss(img, txt, torch.tensor(10.0), torch.tensor(-5.0), positives)
    assert float(loss) == pytest.approx(2.51343070, abs=1e-6)
    with pytest.raises(ValueError, match="positives"):
        siglip_loss(img, txt, torch.tensor(1.0), torch.tensor(0.0), torch.ones(3, 3, dtype=torch.bool))


def test_siglip_hand_worked_more_images_than_texts() -> None:
    """Three images against two distinct texts (the region objective's shape): images [[2, 0],
    [0, 3], [1, 0]] and texts [[1, 0], [0, 0.5]], image 2 with text 0 as image 0.

    Normalised, img @ txt.T = [[1, 0], [0, 1], [1, 0]]; at scale 1, bias 0 each true pair costs
    -log sigmoid(1) = 0.31326169 and each other log 2 = 0.69314718: 3 of each over N=3 images,
    (3 * 0.31326169 + 3 * 0.69314718) / 3 = 1.00640887. Without positives there is no diagonal to
    default to, so it is refused."""
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    positives = torch.tensor([[True, False], [False, True], [True, False]])
    loss = siglip_loss(img, txt, torch.tensor(1.0), torch.tensor(0.0), positives)
    assert float(loss) == pytest.approx(1.00640887, abs=1e-7)
    with pytest.raises(ValueError, match="positives"):
        siglip_loss(img, txt, torch.tensor(1.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        siglip_loss(img, torch.zeros(2, 3), torch.tensor(1.0), torch.tensor(0.0), positives)


def test_siglip_matched_pairs_beat_shuffled() -> None:
    img = torch.randn(8, 16)
    txt = img + 0.3 * torch.randn(8, 16)
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    matched = siglip_loss(img, txt, scale, bias)
    shuffled = siglip_loss(img, txt[torch.roll(torch.arange(8), 1)], scale, bias)
    assert float(matched) < float(shuffled)


def test_siglip_gradients_reach_scale_and_bias() -> None:
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    emb = torch.randn(4, 8, requires_grad=True)
    siglip_loss(emb, torch.randn(4, 8), scale, bias).backward()
    assert scale.grad is not None and bias.grad is not None and emb.grad is not None
    # with bias -10 every logit is very negative: the diagonal positives pull the bias up
    assert float(bias.grad) < 0


def test_label_counts_skip_the_first_position_and_ignored_labels() -> None:
    labels = torch.tensor([[5, 6, X, 7], [X, X, 8, 9], [4, X, X, X]])  # [3, 4]
    # the first position is never scored (nothing predicts it), ignored positions neither
    assert label_counts(labels).tolist() == [2, 2, 0]

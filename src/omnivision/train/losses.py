"""Training losses: next-token cross-entropy, sequence log-probabilities, DPO and SigLIP's sigmoid loss.

Pure functions over tensors; they know nothing of models, tokenizers or batches. Label convention
(shared with `train/encode.py` and `train/collate.py`): `labels [B, T]` is aligned with
`input_ids [B, T]`, holds the token id itself where the model must learn to produce that token and
`IGNORE_INDEX` (-100) elsewhere; the shift (logits at t predict the token at t+1) happens here. So
`labels[:, 0]` is never counted: nothing predicts the first token.

All reductions run in float32, whatever the logits' dtype.

References: DPO, Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model" (arXiv:2305.18290), eq. 7; SigLIP, Zhai et al. 2023, "Sigmoid Loss for
Language Image Pre-Training" (arXiv:2303.15343), eq. 1 / algorithm 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label value for positions that do not count (prompt, image, padding); `F.cross_entropy`'s default."""


def _shifted_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] -> negative log-likelihood [B, T-1] of each next token (0 where
    the label is IGNORE_INDEX)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match "
                         "as [B, T, V] and [B, T]")
    pred = logits[:, :-1].float()  # [B, T-1, V]: position t predicts token t+1
    target = labels[:, 1:].long()  # [B, T-1]
    return F.cross_entropy(pred.transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                           reduction="none")  # [B, T-1]


def label_counts(labels: torch.Tensor) -> torch.Tensor:
    """How many next tokens of each sequence are scored: labels [B, T] -> [B] (`labels[:, 0]` never is)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)  # [B]


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of counted tokens, both 0-dim tensors.

    Sum the pairs over micro-batches (and all-reduce them over processes) and divide once, to get the
    exact per-token mean of the whole batch whatever the number of labels per micro-batch.
    """
    nll = _shifted_token_nll(logits, labels)  # [B, T-1]
    return nll.sum(), label_counts(labels).sum()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens: logits [B, T, V], labels [B, T] -> [].

    A batch without any labelled token gives 0 (still attached to the graph), not NaN.
    """
    total, count = lm_loss_sum(logits, labels)
    return total / count.clamp(min=1)


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where `lm_loss` scores a prediction and what it must be: labels [B, T] -> (at [B, T] bool, the
    positions whose next token is labelled, targets [M], those tokens in row-major order). The
    model's logits at `at` ([M, V], `OmniVisionModel.forward(logits_at=at)`) and `targets` give
    `token_loss`, which equals `lm_loss` of the full logits."""
    scored = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]: position t predicts token t+1
    at = F.pad(scored, (0, 1))  # [B, T]; the last position predicts nothing
    return at, labels[:, 1:][scored]


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [M, V] against targets [M] (float32), as `lm_loss` reduces it: 0,
    still attached to the graph, when M is 0."""
    total = F.cross_entropy(logits.float(), targets.long(), reduction="sum")  # []
    return total / max(targets.numel(), 1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of each sequence's labelled next tokens: [B, T, V], [B, T] -> [B].

    The same shift as `lm_loss`: logits at t score `labels[:, t+1]`. This is log pi(y | x) in DPO.
    """
    return -_shifted_token_nll(logits, labels).sum(-1)  # [B]


def scored_sequence_logps(logits: torch.Tensor, targets: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """`sequence_logps` from the logits of the scored positions only: logits [M, V] of the positions
    `at` [B, T] names (row-major) and their targets [M], both from `next_token_targets` -> [B]."""
    token = -F.cross_entropy(logits.float(), targets.long(), reduction="none")  # [M]
    rows = at.nonzero()[:, 0]  # [M]: the sequence each scored position belongs to
    return torch.zeros(at.shape[0], dtype=token.dtype, device=token.device).index_add(0, rows, token)  # [B]


@dataclass
class DPOOutput:
    """What `dpo_loss` returns; everything except `loss` is detached, for logging."""

    loss: torch.Tensor
    """[]: mean over the batch of -log sigmoid(beta * margin of log-ratios)."""
    chosen_rewards: torch.Tensor
    """[B]: beta * (log pi(y_w|x) - log pi_ref(y_w|x)), the implicit reward of the chosen answer."""
    rejected_rewards: torch.Tensor
    """[B]: beta * (log pi(y_l|x) - log pi_ref(y_l|x))."""
    reward_accuracy: torch.Tensor
    """[]: fraction of pairs whose chosen reward is strictly above the rejected one."""
    margin: torch.Tensor
    """[]: mean of chosen_rewards - rejected_rewards (the argument of the sigmoid, averaged)."""


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> DPOOutput:
    """The sigmoid DPO loss of Rafailov et al. 2023 (arXiv:2305.18290, eq. 7) over sequence log-probs [B].

        loss = -mean_b log sigmoid(beta * ((pc - rc) - (pr - rr)))

    with p/r the policy/reference log-probabilities (`sequence_logps`) of the chosen (c) and
    rejected (r) answers. Intuition: beta * log(pi / pi_ref) is the reward the policy implicitly
    assigns to an answer (the closed-form optimum of KL-regularised RL, with beta the KL weight), and
    the loss is the Bradley-Terry likelihood that the chosen answer beats the rejected one under that
    reward. It pushes the chosen answer up and the rejected one down *relative to the reference*, and
    saturates once the implicit reward margin is large, so the policy cannot drift arbitrarily far
    from the reference to win a pair. A larger beta keeps the policy closer to the reference.
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_logratio = policy_chosen.float() - ref_chosen.float()  # [B]
    rejected_logratio = policy_rejected.float() - ref_rejected.float()  # [B]
    loss = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()  # []
    chosen_rewards = (beta * chosen_logratio).detach()  # [B]
    rejected_rewards = (beta * rejected_logratio).detach()  # [B]
    return DPOOutput(
        loss=loss,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        reward_accuracy=(chosen_rewards > rejected_rewards).float().mean(),
        margin=(chosen_rewards - rejected_rewards).mean(),
    )


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv:2303.15343): [N, D], [M, D] -> [].

    Both embeddings are L2-normalised; logits = logit_scale * img @ txt.T + logit_bias [N, M]; the
    label is +1 for a true pair and -1 elsewhere, and

        loss = -(1/N) * sum_{i,j} log sigmoid(label_ij * logit_ij)

    i.e. the mean over images of the sum over texts. Every pair is an independent binary
    classification, so unlike the softmax (CLIP) loss no normalisation over the batch is needed.

    `logit_scale` is the multiplier t itself, not its log: with the paper's parameterisation
    t = exp(t') (t' initialised to log 10, the bias to -10), pass `t_prime.exp()`.

    `positives` [N, M] (bool) marks every text that is true of an image, for data where a text can
    describe several images of a batch ("a red circle") or where the texts are the batch's distinct
    ones (M != N); the default, for N == M, is the diagonal (the matched pairs). Since each pair is
    its own binary term, several positives per row need no other change.
    """
    if image_emb.dim() != 2 or text_emb.dim() != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} "
                         "must be [N, D] and [M, D]")
    img = F.normalize(image_emb.float(), dim=-1)  # [N, D]
    txt = F.normalize(text_emb.float(), dim=-1)  # [M, D]
    logits = logit_scale.float() * img @ txt.T + logit_bias.float()  # [N, M]
    n = logits.shape[0]
    if positives is None:
        if n != logits.shape[1]:
            raise ValueError(f"{n} images and {logits.shape[1]} texts: without matched pairs, "
                             "positives [N, M] must say which are true")
        positives = torch.eye(n, device=logits.device, dtype=torch.bool)
    elif positives.shape != logits.shape:
        raise ValueError(f"positives {tuple(positives.shape)} must be [N, M] = {tuple(logits.shape)}")
    labels = 2 * positives.to(logits.dtype) - 1  # [N, M]: +1 true pairs, -1 the rest
    return -F.logsigmoid(labels * logits).sum() / n

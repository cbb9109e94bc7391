"""Per-sequence log-probabilities of response tokens, from a causal LM's logits."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum and mean of log p(label_t | tokens < t) over labelled positions, and their count.

    `logits`: [batch, seq, vocab] for the input sequence; `labels`: [batch, seq] with the
    input token ids at response positions and IGNORE_INDEX elsewhere (prompt, image, padding).
    Position t's label is predicted by the logits at t-1, hence the shift.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    logits = logits[:, :-1, :].float()
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    safe_labels = labels.masked_fill(~mask, 0)
    # gather - logsumexp never materialises a second [batch, seq, vocab] tensor of log-probs
    token_logps = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    token_logps = token_logps * mask
    counts = mask.sum(-1)
    sums = token_logps.sum(-1)
    return sums, sums / counts.clamp(min=1), counts

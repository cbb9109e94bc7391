"""Per-sequence log-probabilities of response tokens, from a causal LM's logits: at every position
(`sequence_logps`) or at the positions that predict a response token only (`response_position_logps`,
whose logits come from the forward's `logits_to_keep=predicting_positions(labels)`)."""

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


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """[batch, seq] bool: the positions whose logits predict a labelled token (position t predicts t+1)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def kept_logps(
    logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, sequences: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum and mean log-prob per sequence, and token counts, [sequences] each, from kept logits.

    `logits` [K, vocab]: the positions a forward kept (`logits_to_keep`); token t of all sequences'
    responses, `targets[t]`, is read from row `rows[t]` and belongs to sequence `owner[t]`.
    """
    logits = logits.float()
    if rows.numel() and int(rows.max()) >= logits.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows, the batch reads row {int(rows.max())}")
    token_logps = logits[rows, targets] - torch.logsumexp(logits, dim=-1)[rows]
    sums = torch.zeros(sequences, dtype=token_logps.dtype, device=token_logps.device).index_add(0, owner, token_logps)
    counts = torch.bincount(owner, minlength=sequences)
    return sums, sums / counts.clamp(min=1), counts


def response_position_logps(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As `sequence_logps`, from `logits` [K, vocab] at `predicting_positions(labels)` only (row-major, the
    order a boolean `logits_to_keep` returns them in): the head never runs on image or prompt positions."""
    keep = predicting_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    if logits.dim() != 2 or logits.shape[0] != targets.numel():
        raise ValueError(
            f"logits {tuple(logits.shape)}: expected [{targets.numel()}, vocab], one row per labelled token"
        )
    rows = torch.arange(targets.numel(), device=targets.device)
    return kept_logps(logits, rows, targets, keep.nonzero(as_tuple=True)[0], labels.shape[0])

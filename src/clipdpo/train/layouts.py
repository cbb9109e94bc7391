"""How a batch of pairs goes through the model: `forward: shared_prefix | concatenated | auto`.

Both layouts give, per pair, the chosen and rejected responses' summed and mean log-probs in the
same order (chosen sequences 0..n-1, rejected n..2n-1) for the policy pass, the reference pass
and a frozen reference model alike; only the cost differs (see prefix.py). `auto` takes the
shared prefix where the model supports it and logs why not where it does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from clipdpo.train import prefix
from clipdpo.train.data import collate
from clipdpo.train.encode import Encoded
from clipdpo.train.imagefeatures import image_inputs
from clipdpo.train.logps import predicting_positions, response_position_logps, sequence_logps

log = logging.getLogger("clipdpo.train")

FORWARDS = ("auto", "shared_prefix", "concatenated")
Logps = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # sums, means, counts over the 2n sequences
Batch = dict[str, torch.Tensor]
ModelCall = Callable[..., Any]  # the model, or its DDP / DeepSpeed wrapper: called with the forward's keywords


class Layout(Protocol):
    """How a batch of pairs goes through a model: the batch it collates, and the per-response log-probs."""

    @property
    def name(self) -> str:
        """The `forward` value it stands for (in the run's summary and log)."""
        ...

    def prepare(self, model: torch.nn.Module) -> None:
        """Ready `model` (the policy, or a frozen reference) for this layout, before any wrapping."""
        ...

    def collate(self, encoded: list[Encoded], pad_token_id: int) -> Batch:
        """One micro-batch of encoded pairs, in this layout's rows."""
        ...

    def logps(self, call: ModelCall, batch: Batch, device: torch.device, dtype: torch.dtype) -> Logps:
        """(sums, means, counts) of the 2n responses, chosen 0..n-1 then rejected n..2n-1; images cast to dtype."""
        ...

    def tokens(self, batch: Batch) -> int:
        """The tokens the forward runs (for tokens/s)."""
        ...

    def pair_images(self, batch: Batch) -> torch.Tensor:
        """One pixel_values row per pair."""
        ...


def model_logits(
    model: ModelCall, batch: Batch, device: torch.device, dtype: torch.dtype, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of a concatenated batch; inputs moved to `device`, images cast to the model's dtype. A batch
    with cached `image_features` (one per pair, imagefeatures.py) gives them to both rows of each pair.
    `keep` ([rows, seq] bool): only those positions' logits, [K, vocab] (the model's `logits_to_keep`)."""
    extra = {} if keep is None else {"logits_to_keep": keep.to(device)}
    return model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        **image_inputs(model, batch, device, dtype, copies=2),
        use_cache=False,
        **extra,
    ).logits


@dataclass(frozen=True)
class Concatenated:
    """Two rows per pair, [prefix | chosen] and [prefix | rejected]; logits at the positions that predict a
    response token where the model takes a boolean `logits_to_keep` (`keep_logits`), else at every one."""

    keep_logits: bool = False
    name = "concatenated"

    def prepare(self, model: torch.nn.Module) -> None:
        pass

    def collate(self, encoded: list[Encoded], pad_token_id: int) -> Batch:
        return collate(encoded, pad_token_id)

    def logps(self, call: ModelCall, batch: Batch, device: torch.device, dtype: torch.dtype) -> Logps:
        labels = batch["labels"].to(device)
        if not self.keep_logits:
            return sequence_logps(model_logits(call, batch, device, dtype), labels)
        logits = model_logits(call, batch, device, dtype, keep=predicting_positions(labels))
        return response_position_logps(logits, labels)

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    def pair_images(self, batch: Batch) -> torch.Tensor:
        """One pixel_values row per pair (the rejected rows repeat the chosen rows' images)."""
        return batch["pixel_values"][: batch["input_ids"].shape[0] // 2]


@dataclass(frozen=True)
class SharedPrefix:
    """One packed row per pair, [prefix | chosen | rejected]; logits only where a response token is read."""

    attention: str  # the prepared model's attention implementation (prefix.attention_implementation)
    name = "shared_prefix"

    def prepare(self, model: torch.nn.Module) -> None:
        prefix.prepare(model)  # the frozen reference model runs the same attention as the policy

    def collate(self, encoded: list[Encoded], pad_token_id: int) -> Batch:
        return prefix.collate_shared_prefix(encoded, pad_token_id)

    def logps(self, call: ModelCall, batch: Batch, device: torch.device, dtype: torch.dtype) -> Logps:
        batch = {key: value.to(device) for key, value in batch.items()}
        images = image_inputs(call, batch, device, dtype, copies=1)
        positions = prefix.rotary_positions(call, batch)
        logits = call(**prefix.model_inputs(batch, self.attention, dtype, images, positions)).logits
        return prefix.response_logps(logits, batch)

    def tokens(self, batch: Batch) -> int:
        return int((batch["segments"] != prefix.PAD).sum())

    def pair_images(self, batch: Batch) -> torch.Tensor:
        return batch["pixel_values"]  # one per packed row = per pair


def choose(forward: str, model: torch.nn.Module) -> Concatenated | SharedPrefix:
    """The layout for config value `forward`, preparing `model` for it (before any DDP / DeepSpeed wrapping)."""
    if forward not in FORWARDS:
        raise ValueError(f"forward={forward!r}; expected one of {list(FORWARDS)}")
    concatenated = Concatenated(keep_logits=prefix.takes_logits_mask(model))
    if forward == "concatenated":
        return concatenated
    reason = prefix.unsupported_reason(model)
    if reason is not None and forward == "auto":
        log.info("forward=auto: concatenated, as the shared prefix cannot run here: %s", reason)
        return concatenated
    prefix.prepare(model)  # forward=shared_prefix on a model that cannot: SharedPrefixUnsupported, with the reason
    return SharedPrefix(prefix.attention_implementation(model))

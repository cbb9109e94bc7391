"""The language model's last decoder layer runs only at the positions whose output is read.

In a shared-prefix batch the loss reads the final hidden state only where a response token is
predicted (prefix.collate_shared_prefix's `logits_mask`); image and prompt positions feed the
responses through their keys and values alone. Every layer but the last needs those positions'
outputs (the next layer's keys and values come from them); the last layer needs only their keys
and values. So the last layer here computes keys and values everywhere and its queries, attention
output, MLP and residuals only at the read positions, leaving the rest of its output as its
input (never read). With 576 image tokens in front of ~30 prompt tokens and ~160 response tokens
that skips ~80% of the last layer's work on ~75% of a row's positions: about 1/L of an L-layer
model's forward and backward (2 layers: ~30%; LLaVA-1.5's 32: ~2%).

The layer's own submodules run (so LoRA adapters, DDP and ZeRO-3 hooks see ordinary calls); the
layer must have the Llama shape (input_layernorm, self_attn with q/k/v/o projections and rotary
positions, post_attention_layernorm, mlp), which Llama, Mistral and Qwen2 share, without a sliding
window. Anything else keeps the full last layer, with the reason logged.
"""

from __future__ import annotations

import functools
import logging
import sys

import torch

log = logging.getLogger("clipdpo.train")

POSITIONS = "last_layer_positions"  # the forward keyword: [n, L] bool, the positions whose output is read
_INSTALLED = "_clipdpo_last_layer_read_positions"
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups")
_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


def last_layer(language_model) -> torch.nn.Module | None:
    layers = getattr(language_model, "layers", None)
    return layers[-1] if isinstance(layers, torch.nn.ModuleList) and len(layers) else None


def unsupported_reason(layer) -> str | None:
    """Why `layer` cannot run at the read positions only, or None when it can."""
    if layer is None:
        return "the language model has no `layers` list"
    missing = [name for name in _LAYER_PARTS if not hasattr(layer, name)]
    missing += [
        f"self_attn.{name}" for name in _ATTENTION_PARTS if not hasattr(getattr(layer, "self_attn", None), name)
    ]
    if missing:
        return f"{type(layer).__name__} has no {missing}"
    attention = layer.self_attn
    if hasattr(attention, "q_norm") or hasattr(attention, "k_norm"):
        return f"{type(attention).__name__} normalises queries and keys (q_norm / k_norm)"
    config = getattr(attention, "config", None)
    window = getattr(attention, "sliding_window", None) or getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True):  # Qwen2 sets a window it does not use
        return f"{type(attention).__name__} uses sliding-window attention (window {window})"
    if not hasattr(sys.modules[type(attention).__module__], "rotate_half"):
        return f"{type(attention).__module__} has no rotate_half (rotary positions of another form)"
    return None


def install(language_model) -> bool:
    """Make the last decoder layer honour `last_layer_positions`; True when it does (idempotent)."""
    layer = last_layer(language_model)
    reason = unsupported_reason(layer)
    if layer is None or reason is not None:  # no layer has a reason too (unsupported_reason)
        log.info("shared prefix: the last decoder layer runs at every position, as %s", reason)
        return False
    if not getattr(layer, _INSTALLED, False):
        full_forward = layer.forward

        def forward(hidden_states, *args, **kwargs):
            positions = kwargs.pop(POSITIONS, None)
            mask = kwargs.get("attention_mask")
            if (
                positions is None
                or not isinstance(mask, torch.Tensor)
                or mask.dim() != 4
                or args
                or (layer.training and layer.self_attn.attention_dropout)
            ):
                return full_forward(hidden_states, *args, **kwargs)
            if getattr(layer, "gradient_checkpointing", False) and layer.training:  # as the layer's own forward
                return layer._gradient_checkpointing_func(
                    functools.partial(forward_at, layer), hidden_states, mask, kwargs["position_embeddings"], positions
                )
            return forward_at(layer, hidden_states, mask, kwargs["position_embeddings"], positions)

        layer.forward = forward  # an instance attribute: nn.Module.__call__ (and its hooks) still run it
        setattr(layer, _INSTALLED, True)
    return True


def is_installed(language_model) -> bool:
    return bool(getattr(last_layer(language_model), _INSTALLED, False))


def _rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_half) -> torch.Tensor:
    """Rotary positions, as the model's apply_rotary_pos_emb: states [n, heads, L, d], cos / sin [n, L, d]."""
    return states * cos[:, None] + rotate_half(states) * sin[:, None]


def forward_at(
    layer,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    positions: torch.Tensor,
) -> torch.Tensor:
    """The layer's output at `positions` ([n, L] bool); elsewhere its input, unchanged (never read).

    hidden_states [n, L, hidden]; attention_mask [n, 1, L, L] (True / 0.0 where a query may attend a
    key); position_embeddings: the rotary (cos, sin), [n, L, head_dim] each.
    """
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    attention = layer.self_attn
    rotate_half = sys.modules[type(attention).__module__].rotate_half
    n, length, _ = hidden_states.shape
    heads_dim = attention.head_dim
    rows, columns = positions.nonzero(as_tuple=True)  # row-major: slot k of row i is its k-th read position
    counts = positions.sum(1)
    width = int(counts.max())
    slots = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    # [n, width] columns of each row's read positions; unused slots read column 0, which attends
    # to key 0 at least, so no row of their mask is empty (an empty row would give NaN)
    gather = torch.zeros((n, width), dtype=torch.long, device=rows.device).index_put((rows, slots), columns)

    normed = layer.input_layernorm(hidden_states)
    key = attention.k_proj(normed).view(n, length, -1, heads_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(n, length, -1, heads_dim).transpose(1, 2)
    query = attention.q_proj(normed[rows, columns])  # [K, heads * d]
    query = query.new_zeros(n, width, query.shape[-1]).index_put((rows, slots), query)
    query = query.view(n, width, -1, heads_dim).transpose(1, 2)
    cos, sin = (part.expand(n, -1, -1) for part in position_embeddings)  # [1, L, d] when rows share positions
    batch_index = torch.arange(n, device=rows.device)[:, None]
    query = _rotate(query, cos[batch_index, gather], sin[batch_index, gather], rotate_half)
    key = _rotate(key, cos, sin, rotate_half)
    if attention.num_key_value_groups > 1:  # grouped-query attention: one key head per query group
        key = key.repeat_interleave(attention.num_key_value_groups, dim=1)
        value = value.repeat_interleave(attention.num_key_value_groups, dim=1)
    mask = attention_mask[batch_index, 0, gather][:, None]  # [n, 1, width, L]
    attended = sdpa(query, key, value, attn_mask=mask, scale=attention.scaling)
    attended = attended.transpose(1, 2).reshape(n, width, -1)[rows, slots]  # [K, heads * d]
    out = hidden_states[rows, columns] + attention.o_proj(attended)
    out = out + layer.mlp(layer.post_attention_layernorm(out))
    return hidden_states.index_put((rows, columns), out)

"""Shared-prefix DPO forward: the image and prompt run once per pair, logits only where they count.

The concatenated layout runs two rows per pair, `[prefix | chosen]` and `[prefix | rejected]`,
so the image tokens (576 for LLaVA-1.5) and the prompt go through the language model twice and
the vision tower encodes each image twice. Here each pair is one packed row

    [prefix (image + prompt) | chosen | rejected | padding]

with a 4-D block attention mask (every token sees the prefix and the earlier tokens of its own
segment; rejected tokens never see chosen ones) and position ids that restart after the prefix
(for Qwen VL's multimodal rotary positions, in all three sections: `mrope_positions`), so each
response sees exactly what it sees in its own row of the concatenated layout: the same log-probs,
up to float summation order. The LM head runs only on the hidden states that predict
a response token (`logits_to_keep` as a boolean mask), never on image or prompt positions; the
last prefix position predicts the first token of both responses and is computed once. The last
decoder layer computes only keys and values at the other positions (lastlayer.py).

Attention: a dense 4-D mask makes SDPA compute every (query, key) score of the packed row,
masked or not. With SDPA the model's attention is switched to `clipdpo_shared_prefix`, which
is SDPA for every ordinary call and, for a packed batch (`pair_spans` passed), runs per row the
prefix causally (`is_causal`, whose kernel skips the upper triangle) and the two responses'
queries against the prefix and their own segment only. Eager attention gets the dense mask.
"""

from __future__ import annotations

import inspect

import torch

from clipdpo.errors import UserError
from clipdpo.train import lastlayer
from clipdpo.train.encode import Encoded, image_batch
from clipdpo.train.logps import kept_logps

PAD, PREFIX, CHOSEN, REJECTED = -1, 0, 1, 2
# Model types whose forward is known to honour a custom 4-D mask and position ids given per token, by the
# positions their rotary embedding takes: one per token (Llama's RoPE: "1d"), or Qwen2-VL-style multimodal
# RoPE ("mrope": temporal, height and width sections; an image's tokens sit at their place in its patch grid).
# Each was added when the equality tests (test_shared_prefix.py, test_qwen_vl.py) showed the shared prefix's
# log-probs and gradients equal to the concatenated forward's.
POSITION_SCHEMES = {"llava": "1d", "qwen2_5_vl": "mrope", "qwen3_vl": "mrope"}
SUPPORTED_MODEL_TYPES = tuple(POSITION_SCHEMES)
MASKED_ATTENTION = ("sdpa", "eager")  # the kernels that take an arbitrary 4-D mask tensor
BLOCK_ATTENTION = "clipdpo_shared_prefix"  # SDPA, plus the block-sparse path for packed pair rows
# Below this packed-row length one dense masked SDPA call for the batch is cheaper than two calls
# per row and layer (measured on CPU: the tiny bench's ~60-token rows ran slower per row)
BLOCK_MIN_LENGTH = 256


class SharedPrefixUnsupported(ValueError, UserError):
    """The model cannot run the shared-prefix forward; `forward: concatenated` works for it."""


def _base_model(model):
    """The Hugging Face model under DDP / DeepSpeed / PEFT wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP or DeepSpeed engine
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def unsupported_reason(model) -> str | None:
    """Why `model` cannot run the shared-prefix forward, or None when it can."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (
            f"{type(base).__name__} (model_type {model_type!r}) is not one of the model types known to take a "
            f"4-D attention mask and restarted position ids: {list(SUPPORTED_MODEL_TYPES)}"
        )
    parameters = inspect.signature(base.forward).parameters
    missing = [name for name in ("position_ids", "logits_to_keep", "pixel_values") if name not in parameters]
    if missing:
        return f"{type(base).__name__}.forward takes no {missing}"
    attention = attention_implementation(base)
    if attention not in MASKED_ATTENTION + (BLOCK_ATTENTION,):
        return (
            f"attention implementation {attention!r} takes no custom 4-D mask; load the model with "
            f"attn_implementation in {list(MASKED_ATTENTION)}"
        )
    return None


def takes_logits_mask(model) -> bool:
    """Whether the model's forward takes a boolean [rows, seq] `logits_to_keep` (the model types above do)."""
    base = _base_model(model)
    return (
        getattr(getattr(base, "config", None), "model_type", None) in SUPPORTED_MODEL_TYPES
        and "logits_to_keep" in inspect.signature(base.forward).parameters
    )


def attention_implementation(model) -> str:
    config = _base_model(model).config
    text_config = getattr(config, "text_config", None) or config
    return getattr(text_config, "_attn_implementation", None) or "eager"


def check_supported(model) -> None:
    reason = unsupported_reason(model)
    if reason is not None:
        raise SharedPrefixUnsupported(f"forward=shared_prefix: {reason}; set forward=concatenated")


def prepare(model) -> None:
    """Check the model, and switch its language model from SDPA to the block-sparse SDPA.

    The switch changes nothing for ordinary calls (generation, the concatenated forward): they
    take the SDPA path. The setting is not saved with the model (Hugging Face drops it).
    """
    check_supported(model)
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(BLOCK_ATTENTION, block_sparse_attention)
    AttentionMaskInterface.register(BLOCK_ATTENTION, sdpa_mask)  # ordinary calls get SDPA's masks
    base = _base_model(model)
    text_config = getattr(base.config, "text_config", None) or base.config
    if attention_implementation(model) == "sdpa":
        text_config._attn_implementation = BLOCK_ATTENTION
    lastlayer.install(getattr(getattr(base, "model", None), "language_model", None))


def _pair_row_attention(query, key, value, span: tuple[int, int, int], scaling) -> torch.Tensor:
    """One packed row [1, heads, L, dim]: the prefix causally, each response on the prefix and itself."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    p, c, r = span
    prefix_out = sdpa(query[:, :, :p], key[:, :, :p], value[:, :, :p], is_causal=True, scale=scaling)
    q_index = torch.arange(p, p + c + r, device=query.device)[:, None]
    k_index = torch.arange(p + c + r, device=query.device)[None, :]
    same_side = (q_index < p + c) == (k_index < p + c)
    allowed = (k_index < p) | (same_side & (k_index <= q_index))
    response_out = sdpa(
        query[:, :, p : p + c + r], key[:, :, : p + c + r], value[:, :, : p + c + r], attn_mask=allowed, scale=scaling
    )
    pad = query.new_zeros(query.shape[0], query.shape[1], query.shape[2] - p - c - r, query.shape[3])
    return torch.cat([prefix_out, response_out, pad], dim=2)


def block_sparse_attention(module, query, key, value, attention_mask, **kwargs):
    """A transformers attention function: SDPA, or per packed row when `pair_spans` [(p, c, r), ...] is given.

    query [n, heads, L, dim], key / value [n, kv_heads, L, dim]; returns ([n, L, heads, dim], None).
    """
    pair_spans = kwargs.pop("pair_spans", None)
    if pair_spans is None or kwargs.get("dropout"):  # a packed batch's 4-D mask keeps SDPA right, only slower
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    scaling = kwargs.get("scaling")
    if key.shape[1] != query.shape[1]:  # grouped-query attention: one key head per query group
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    rows = [
        _pair_row_attention(query[i : i + 1], key[i : i + 1], value[i : i + 1], span, scaling)
        for i, span in enumerate(pair_spans)
    ]
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def collate_shared_prefix(encoded: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One packed row per pair, and where each response token's log-prob is read from.

    Returns input_ids / position_ids / segments [n, L]; logits_mask [n, L] (the positions whose
    logits are computed, in row-major order = the rows of the returned logits); target_rows,
    target_labels, target_owner [T]: response token t is read from logits row target_rows[t] at
    vocabulary entry target_labels[t] and belongs to sequence target_owner[t] (pair i's chosen
    response is sequence i, its rejected one n + i, as in `collate`); pixel_values: one image per pair.
    """
    n = len(encoded)
    length = max(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in encoded)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n, length), dtype=torch.long)
    segments = torch.full((n, length), PAD, dtype=torch.long)
    logits_mask = torch.zeros((n, length), dtype=torch.bool)
    predictors, labels, owners = [], [], []  # (row, column) of the predicting position per target
    for i, item in enumerate(encoded):
        p, c, r = len(item.prompt_ids), len(item.chosen_ids), len(item.rejected_ids)
        input_ids[i, : p + c + r] = torch.cat([item.prompt_ids, item.chosen_ids, item.rejected_ids])
        position_ids[i, : p + c + r] = torch.cat([torch.arange(p), p + torch.arange(c), p + torch.arange(r)])
        segments[i, :p], segments[i, p : p + c], segments[i, p + c : p + c + r] = PREFIX, CHOSEN, REJECTED
        # token k of a response is predicted by the token before it: the prefix's last for k = 0
        for start, response, owner in ((p, item.chosen_ids, i), (p + c, item.rejected_ids, n + i)):
            columns = torch.cat([torch.tensor([p - 1]), start + torch.arange(len(response) - 1)])
            logits_mask[i, columns] = True
            predictors.append(i * length + columns)
            labels.append(response)
            owners.append(torch.full((len(response),), owner, dtype=torch.long))
    row_of_flat = torch.cumsum(logits_mask.flatten(), 0) - 1  # flat position -> row of the kept logits
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segments": segments,
        "logits_mask": logits_mask,
        "target_rows": row_of_flat[torch.cat(predictors)],
        "target_labels": torch.cat(labels),
        "target_owner": torch.cat(owners),
        **image_batch(encoded, copies=1),
        "pair_spans": torch.tensor([[len(e.prompt_ids), len(e.chosen_ids), len(e.rejected_ids)] for e in encoded]),
    }


def block_attention_mask(segments: torch.Tensor, additive_dtype: torch.dtype | None = None) -> torch.Tensor:
    """[n, 1, L, L] mask from [n, L] segment ids: True (or 0.0) where query q may attend key k.

    k <= q, and k is in the prefix or in q's own segment. Padding attends only to itself, so no
    row of the mask is empty (an empty row gives NaN in SDPA, which would reach the gradients).
    `additive_dtype` gives the float form (0 / dtype min) that eager attention adds to its scores.
    """
    length = segments.shape[1]
    index = torch.arange(length, device=segments.device)
    causal = index[None, :] <= index[:, None]
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = causal & (query != PAD) & ((key == PREFIX) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    allowed = allowed[:, None]
    if additive_dtype is None:
        return allowed
    zero = torch.zeros((), dtype=additive_dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(additive_dtype).min)


def _batch_images(batch: dict, dtype: torch.dtype) -> dict:
    images = {"pixel_values": batch["pixel_values"].to(dtype)}
    return {**images, "image_grid_thw": batch["image_grid_thw"]} if "image_grid_thw" in batch else images


def image_token_types(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[rows, L] int: 1 at the model's image tokens, 0 elsewhere (the `mm_token_type_ids` a Qwen VL takes)."""
    return (input_ids == _base_model(model).config.image_token_id).int()


def mrope_positions(model, batch: dict) -> torch.Tensor:
    """[3, n, L] multimodal rotary positions of packed pair rows: each response's as in its own concatenated row.

    The prefix's come from the model's own `get_rope_index` (text advances all three sections together; an
    image's tokens take (temporal, row, column) offsets from where it starts, and the text after it continues
    from its largest position + 1). A response is text right after the prefix's text, so in its own row its
    token k sits at the prefix's largest position + 1 + k in all three sections; both responses restart there.
    Padding keeps position 0 (it sees only itself).
    """
    segments = batch["segments"]
    in_prefix = segments == PREFIX
    positions, _ = _base_model(model).model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=image_token_types(model, batch["input_ids"]),
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=in_prefix,  # the responses get 0 here, and their place below
    )
    start = positions.amax(dim=(0, 2)) + 1  # [n]
    step = batch["position_ids"] - in_prefix.sum(1, keepdim=True)  # the 1-D layout's p + k, less p
    responses = (segments == CHOSEN) | (segments == REJECTED)
    return torch.where(responses, (start[:, None] + step).expand(3, -1, -1), positions)


def rotary_positions(model, batch: dict) -> torch.Tensor:
    """The position ids `model` takes for a shared-prefix batch: the batch's [n, L], or [3, n, L] for M-RoPE."""
    model_type = str(getattr(_base_model(model).config, "model_type", ""))
    return mrope_positions(model, batch) if POSITION_SCHEMES.get(model_type) == "mrope" else batch["position_ids"]


def model_inputs(
    batch: dict, attention: str, dtype: torch.dtype, images: dict | None = None, positions: torch.Tensor | None = None
) -> dict:
    """Keyword arguments for a forward over a shared-prefix batch; `images`: the image arguments
    (imagefeatures.image_inputs), by default the batch's pixel_values; `positions`: the position ids
    (`rotary_positions`), by default the batch's one per token."""
    mask = block_attention_mask(batch["segments"], additive_dtype=dtype if attention == "eager" else None)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": mask,
        "position_ids": batch["position_ids"] if positions is None else positions,
        **(images if images is not None else _batch_images(batch, dtype)),
        "logits_to_keep": batch["logits_mask"],
        "use_cache": False,
        # the last decoder layer runs only where logits are kept, where prepare() installed that
        lastlayer.POSITIONS: batch["logits_mask"],
    }
    if attention == BLOCK_ATTENTION and batch["input_ids"].shape[1] >= BLOCK_MIN_LENGTH:
        inputs["pair_spans"] = [tuple(span) for span in batch["pair_spans"].tolist()]
    return inputs


def response_logps(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum and mean log-prob per response, and token counts, [2n] each (chosen rows, then rejected).

    `logits`: [rows, vocab], the kept positions only (what `model_inputs`' logits_to_keep returns).
    """
    return kept_logps(
        logits, batch["target_rows"], batch["target_labels"], batch["target_owner"], 2 * batch["input_ids"].shape[0]
    )


def shared_prefix_logps(call, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run `call` (the model, or its DDP / DeepSpeed wrapper) on a shared-prefix batch; see response_logps.

    `model` tells the attention implementation and dtype (the same for a policy and its frozen reference).
    """
    base = _base_model(model)
    inputs = model_inputs(batch, attention_implementation(base), base.dtype, positions=rotary_positions(base, batch))
    return response_logps(call(**inputs).logits, batch)

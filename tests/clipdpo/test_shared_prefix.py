"""The shared-prefix forward gives the concatenated forward's log-probs and gradients on the tiny LLaVA.

The tiny LLaVA's weights are at O(1) scale (unit_scale.py): at the default 0.02 init every token's log-prob
is ~ -log(vocab), and a position-id bug moves a summed log-prob by ~2e-4, inside the fp32 tolerance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipdpo.artifacts import Artifact
from clipdpo.storage import Storage
from clipdpo.train import prefix
from clipdpo.train.data import collate
from clipdpo.train.encode import PairEncoder
from clipdpo.train.logps import sequence_logps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs_fixture import write_pairs  # noqa: E402
from unit_scale import build_unit_scale_llava, reinit_at_unit_scale, token_logps_spread  # noqa: E402

# Unequal prompt lengths (so the packed rows pad differently from the concatenated ones), unequal
# response lengths on both sides, and with max_length 70 the second pair's chosen response is cut.
EXAMPLES = [
    ((200, 10, 10), "describe the image", "a dog on a red sofa", "a cat"),
    (
        (10, 200, 10),
        "what is in this picture of a park near the river ?",
        "two people walking in the park near the river on a blue day with a dog",
        "a rocket",
    ),
    ((10, 10, 200), "hi", "a man", "a woman holding a cup of coffee in the kitchen"),
]
MAX_LENGTH = 70


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(1)
    path = build_unit_scale_llava(str(tmp_path_factory.mktemp("models") / "tiny-llava"))
    processor = AutoProcessor.from_pretrained(path)
    encoder = PairEncoder(processor, max_length=MAX_LENGTH)
    encoded = encoder.encode_batch([(Image.new("RGB", (40, 40), rgb), *texts) for rgb, *texts in EXAMPLES], True)
    return path, LlavaForConditionalGeneration.from_pretrained(path), encoded, processor.tokenizer.pad_token_id


def set_attention(model, name: str) -> None:
    for config in (model.config, model.config.text_config):
        config._attn_implementation = name
    if name == prefix.BLOCK_ATTENTION:
        set_attention(model, "sdpa")
        prefix.prepare(model)
        assert model.config.text_config._attn_implementation == prefix.BLOCK_ATTENTION


def concatenated_logps(model, encoded, pad):
    batch = collate(encoded, pad)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        use_cache=False,
    ).logits
    return sequence_logps(logits, batch["labels"])


def shared_logps(model, encoded, pad):
    return prefix.shared_prefix_logps(model, model, prefix.collate_shared_prefix(encoded, pad))


def test_the_batch_has_what_the_equality_claims_cover(tiny):
    _, _, encoded, _ = tiny
    totals = [len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in encoded]
    assert len({len(e.prompt_ids) for e in encoded}) == 3 and len(set(totals)) == 3  # unequal, so padded
    assert [e.truncated for e in encoded] == [False, True, False]
    assert len(encoded[1].prompt_ids) + len(encoded[1].chosen_ids) == MAX_LENGTH
    assert len(encoded[2].rejected_ids) > len(encoded[2].chosen_ids)  # rejected longer than chosen too


def tolerance_excess(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> float:
    """The largest |got - expected| in units of the tolerance atol + rtol |expected| (allclose's): <= 1 passes.

    fp32 sums in another order (and attention over a differently padded row): the sums reach |100|, where
    one fp32 ulp is 7.6e-6, so 1e-5 is relative; the means (|x| < 12) hold 1e-5 absolutely (rtol=0)."""
    return ((got - expected).abs() / (atol + rtol * expected.abs())).max().item()


def reference_and_shared_logps(model, encoded, pad, attention: str):
    """The concatenated forward's (sums, means, counts) under SDPA, and the shared prefix's under `attention`."""
    set_attention(model, "sdpa")
    with torch.no_grad():
        expected = concatenated_logps(model, encoded, pad)
        set_attention(model, attention)
        return expected, shared_logps(model, encoded, pad)


# sdpa and eager: one dense 4-D mask; clipdpo_shared_prefix: per row, the prefix causally and the
# responses on the prefix and themselves (the training default where the model runs SDPA)
@pytest.mark.parametrize("attention", ["sdpa", "eager", prefix.BLOCK_ATTENTION])
def test_log_probs_equal_the_concatenated_forward(tiny, attention, monkeypatch):
    _, model, encoded, pad = tiny
    rows_run = []
    row_attention = prefix._pair_row_attention
    monkeypatch.setattr(prefix, "_pair_row_attention", lambda *a: rows_run.append(1) or row_attention(*a))
    monkeypatch.setattr(prefix, "BLOCK_MIN_LENGTH", 0)  # the tiny rows take the block path too
    (sums, means, counts), (shared_sums, shared_means, shared_counts) = reference_and_shared_logps(
        model, encoded, pad, attention
    )
    if attention == prefix.BLOCK_ATTENTION:  # ordinary calls take plain SDPA: the very same numbers
        with torch.no_grad():
            assert torch.equal(concatenated_logps(model, encoded, pad)[0], sums)
    # the block path ran once per packed row and layer but the last (lastlayer.py runs that one at the
    # read positions only), and only when chosen
    layers = model.config.text_config.num_hidden_layers
    assert len(rows_run) == (len(encoded) * (layers - 1) if attention == prefix.BLOCK_ATTENTION else 0)
    assert (
        shared_counts.tolist()
        == counts.tolist()
        == [len(e.chosen_ids) for e in encoded] + [len(e.rejected_ids) for e in encoded]
    )
    assert tolerance_excess(shared_sums, sums) <= 1, (shared_sums - sums).abs().max()
    assert tolerance_excess(shared_means, means, rtol=0) <= 1, (shared_means - means).abs().max()
    assert (sums < 0).all() and len(set(sums.tolist())) == 6  # real, distinct values, not a degenerate match
    if attention == prefix.BLOCK_ATTENTION:  # rows shorter than BLOCK_MIN_LENGTH: one dense masked call
        monkeypatch.setattr(prefix, "BLOCK_MIN_LENGTH", 10_000)
        with torch.no_grad():
            dense_sums = shared_logps(model, encoded, pad)[0]
        assert len(rows_run) == len(encoded) * (layers - 1)
        assert tolerance_excess(dense_sums, sums) <= 1


def test_the_weights_give_log_probs_that_tell_tokens_apart(tiny):
    """What makes the equality above mean something: O(1) logits, per-token log-probs over several nats."""
    _, model, encoded, pad = tiny
    set_attention(model, "sdpa")
    batch = collate(encoded, pad)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            use_cache=False,
        ).logits
    lowest, highest = token_logps_spread(logits, batch["labels"])
    assert 0.5 < logits.std().item() < 10  # neither the default init's ~0.1 nor saturated
    assert highest - lowest > 4 and highest < -0.5, (lowest, highest)  # spread, and no token near certain


def _positions_one_past_the_prefix(collate_shared_prefix):
    """A position-id bug: the responses' positions start one after where they continue the prefix."""

    def collate_with_bug(encoded, pad_token_id):
        batch = collate_shared_prefix(encoded, pad_token_id)
        responses = (batch["segments"] == prefix.CHOSEN) | (batch["segments"] == prefix.REJECTED)
        return {**batch, "position_ids": batch["position_ids"] + responses.long()}

    return collate_with_bug


def _positions_from_zero(collate_shared_prefix):
    """A position-id bug: the responses' positions restart at 0, as if they had no prefix."""

    def collate_with_bug(encoded, pad_token_id):
        batch = collate_shared_prefix(encoded, pad_token_id)
        prefix_length = (batch["segments"] == prefix.PREFIX).sum(1, keepdim=True)
        responses = (batch["segments"] == prefix.CHOSEN) | (batch["segments"] == prefix.REJECTED)
        return {
            **batch,
            "position_ids": torch.where(responses, batch["position_ids"] - prefix_length, batch["position_ids"]),
        }

    return collate_with_bug


def _inject(monkeypatch, bug: str) -> None:
    from clipdpo.train import lastlayer

    if bug == "last layer's queries rotated backwards":  # forward_at rotates the queries, then the keys
        rotate, calls = lastlayer._rotate, []
        monkeypatch.setattr(
            lastlayer,
            "_rotate",
            lambda states, cos, sin, rotate_half: (
                calls.append(1) or rotate(states, cos, -sin if len(calls) % 2 else sin, rotate_half)
            ),
        )
    elif bug == "positions one past the prefix":
        monkeypatch.setattr(
            prefix, "collate_shared_prefix", _positions_one_past_the_prefix(prefix.collate_shared_prefix)
        )
    elif bug == "positions from zero":
        monkeypatch.setattr(prefix, "collate_shared_prefix", _positions_from_zero(prefix.collate_shared_prefix))
    else:  # the rejected response attends to the chosen one: one response segment, in the dense mask and per row
        mask, row = prefix.block_attention_mask, prefix._pair_row_attention
        monkeypatch.setattr(
            prefix,
            "block_attention_mask",
            lambda segments, additive_dtype=None: mask(
                torch.where(segments == prefix.REJECTED, prefix.CHOSEN, segments), additive_dtype
            ),
        )
        monkeypatch.setattr(
            prefix,
            "_pair_row_attention",
            lambda query, key, value, span, scaling: row(query, key, value, (span[0], span[1] + span[2], 0), scaling),
        )


# The equality check's own power: with each bug it must fail, by far. Measured on these weights, the
# smallest margin is the one-past position bug's, ~1,300 tolerances (0.3 nats on a sum); at the default
# 0.02 init the same bug moved the sums by 1.8e-4, 0.3 of the tolerance: it passed.
@pytest.mark.parametrize("attention", ["sdpa", "eager", prefix.BLOCK_ATTENTION])
@pytest.mark.parametrize(
    "bug",
    [
        "positions one past the prefix",
        "positions from zero",
        "rejected sees chosen",
        "last layer's queries rotated backwards",
    ],
)
def test_the_equality_fails_with_a_position_or_mask_bug(tiny, attention, bug, monkeypatch):
    from clipdpo.train import lastlayer

    _, model, encoded, pad = tiny
    monkeypatch.setattr(prefix, "BLOCK_MIN_LENGTH", 0)  # the block path for the per-row kernel
    assert lastlayer.install(model.model.language_model)  # prepare() installs it; sdpa and eager run it too
    rows_run = []
    _inject(monkeypatch, bug)
    row_attention = prefix._pair_row_attention
    monkeypatch.setattr(prefix, "_pair_row_attention", lambda *a: rows_run.append(1) or row_attention(*a))
    (sums, means, _), (shared_sums, shared_means, _) = reference_and_shared_logps(model, encoded, pad, attention)
    assert tolerance_excess(shared_sums, sums) > 100, (shared_sums - sums).abs().max()
    assert tolerance_excess(shared_means, means, rtol=0) > 100, (shared_means - means).abs().max()
    assert bool(rows_run) == (attention == prefix.BLOCK_ATTENTION)  # the bug went through the kernel tested


def assert_gradients_match(got: dict, expected: dict) -> None:
    """fp32 sums over tokens and heads in another order: each tensor within 1e-5 of its largest entry, as a few
    ulps of a gradient entry of size g are ~1e-7 g. The key projections' biases of a tower without rotary
    positions (CLIP's) have no gradient in exact arithmetic (a shift shared by every key leaves the softmax
    alone): theirs is rounding on both sides, held to 1e-6 of the model's largest gradient. A rotary model's key
    bias (Qwen's) is rotated differently at each position, so it does have a gradient, checked as any other."""
    assert got.keys() == expected.keys()
    largest = max(g.abs().max().item() for g in expected.values())
    for name, want in expected.items():
        if name.endswith("k_proj.bias") and want.abs().max().item() <= 1e-6 * largest:
            assert max(want.abs().max().item(), got[name].abs().max().item()) <= 1e-6 * largest, name
            continue
        scale = max(want.abs().max().item(), 1e-3)
        difference = (got[name] - want).abs().max().item()
        assert difference <= 1e-5 * scale, (name, difference, scale)


@pytest.mark.parametrize("attention", ["sdpa", prefix.BLOCK_ATTENTION])
def test_gradients_equal_the_concatenated_forward(tiny, attention, monkeypatch):
    _, model, encoded, pad = tiny
    monkeypatch.setattr(prefix, "BLOCK_MIN_LENGTH", 0)  # the tiny rows take the block path too
    weights = torch.linspace(-1.0, 1.0, 2 * len(encoded))  # a loss that weighs every sequence differently
    grads = []
    for logps in (concatenated_logps, shared_logps):
        set_attention(model, "sdpa" if logps is concatenated_logps else attention)
        model.zero_grad(set_to_none=True)
        sums, means, _ = logps(model, encoded, pad)
        ((weights * sums).sum() + (weights * means).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("vision_tower" in n for n in grads[0])
    assert_gradients_match(grads[1], grads[0])
    assert max(g.abs().max().item() for g in grads[0].values()) > 1e-3  # gradients that mean something


def test_each_image_encoded_once_and_logits_only_at_response_positions(tiny):
    _, model, encoded, pad = tiny
    seen = {}

    def record(key, value) -> None:  # a forward hook that returns None leaves the output alone
        seen[key] = value

    hooks = [
        model.model.vision_tower.register_forward_hook(lambda m, args, out: record("images", args[0].shape[0])),
        model.lm_head.register_forward_hook(lambda m, args, out: record("head_rows", args[0].shape[:-1])),
    ]
    try:
        with torch.no_grad():
            shared_logps(model, encoded, pad)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen["images"] == len(encoded)
    # per pair: the prefix's last position (predicts both first tokens) + the others of each response
    assert tuple(seen["head_rows"]) == (sum(len(e.chosen_ids) + len(e.rejected_ids) - 1 for e in encoded),)


def _fresh_model(path: str, kv_heads: int | None = None):
    """The tiny LLaVA as saved (nothing installed on it); `kv_heads`: a grouped-query copy, random weights."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if kv_heads is None:
        return LlavaForConditionalGeneration.from_pretrained(path)
    config = LlavaConfig.from_pretrained(path)
    config.text_config.num_attention_heads, config.text_config.num_key_value_heads = 4, kv_heads
    return reinit_at_unit_scale(LlavaForConditionalGeneration(config), seed=3).eval()


# eager: the additive float mask; the block path; grouped-query heads (4 query heads on 2 key/value
# heads); gradient checkpointing (train mode: the layer's call goes through torch.utils.checkpoint)
@pytest.mark.parametrize(
    "attention, kv_heads, checkpointing",
    [
        ("eager", None, False),
        (prefix.BLOCK_ATTENTION, None, False),
        (prefix.BLOCK_ATTENTION, 2, False),
        (prefix.BLOCK_ATTENTION, None, True),
    ],
)
def test_the_last_layer_runs_only_where_logits_are_read(tiny, attention, kv_heads, checkpointing, monkeypatch):
    from clipdpo.train import lastlayer

    path, _, encoded, pad = tiny
    monkeypatch.setattr(prefix, "BLOCK_MIN_LENGTH", 0)  # the tiny rows take the block path too
    model = _fresh_model(path, kv_heads)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    batch = prefix.collate_shared_prefix(encoded, pad)
    set_attention(model, "sdpa" if attention == prefix.BLOCK_ATTENTION else attention)
    assert not lastlayer.is_installed(model.model.language_model)
    weights = torch.linspace(-1.0, 1.0, 2 * len(encoded))
    results = []
    for install in (False, True):
        if install:  # prepare() installs it; eager runs without prepare, so install by hand
            set_attention(model, attention) if attention == prefix.BLOCK_ATTENTION else lastlayer.install(
                model.model.language_model
            )
            assert lastlayer.is_installed(model.model.language_model)
        mlp_rows = []  # rows each MLP call runs; recorded in forward itself, as checkpoint recomputes skip hooks
        mlps = [layer.mlp for layer in model.model.language_model.layers]
        for mlp in mlps:
            mlp.forward = lambda x, run=mlp.forward, rows=mlp_rows: rows.append(x.shape[:-1].numel()) or run(x)
        try:
            model.zero_grad(set_to_none=True)
            sums, means, _ = prefix.shared_prefix_logps(model, model, batch)
            ((weights * sums).sum() + (weights * means).sum()).backward()
        finally:
            for mlp in mlps:
                del mlp.forward
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((sums.detach(), mlp_rows, grads))
    (full_sums, full_rows, full_grads), (sums, rows, grads) = results
    every_position, read = batch["input_ids"].numel(), int(batch["logits_mask"].sum())
    assert full_rows[:2] == [every_position, every_position] and rows[:2] == [every_position, read]
    assert read < every_position / 3
    if checkpointing:  # backward recomputed both layers (the last one first), each in its own form
        assert full_rows[2:] == [every_position, every_position] and rows[2:] == [read, every_position]
    else:
        assert len(full_rows) == len(rows) == 2
    # the same attention over the same keys, the queries gathered first: fp32 to within summation order
    assert torch.allclose(sums, full_sums, rtol=1e-5, atol=1e-5), (sums - full_sums).abs().max()
    assert grads.keys() == full_grads.keys()
    assert_gradients_match(grads, full_grads)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_the_read_positions_forward_equals_the_layer_of_each_llama_shaped_family(family):
    """forward_at against the decoder layer's own forward, on random states and a causal 4-D mask with
    unequal read positions per row; Qwen2 has biased q/k/v projections, both have 2 key/value heads on 4."""
    import transformers

    from clipdpo.train import lastlayer

    prefix_name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[family]
    config = getattr(transformers, f"{prefix_name}Config")(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=None,
    )
    torch.manual_seed(0)
    # O(1) weights: at the default init the attention scores are ~1e-3 and a query's rotary position hardly counts
    model = reinit_at_unit_scale(getattr(transformers, f"{prefix_name}Model")(config)).eval()
    layer = lastlayer.last_layer(model)
    assert lastlayer.unsupported_reason(layer) is None
    n, length = 2, 9
    hidden = torch.randn(n, length, 16)
    position_ids = torch.arange(length).repeat(n, 1)
    rotary = model.rotary_emb(hidden, position_ids=position_ids)
    mask = torch.tril(torch.ones(length, length, dtype=torch.bool)).expand(n, 1, length, length)
    positions = torch.zeros(n, length, dtype=torch.bool)
    positions[0, [2, 5, 8]] = True
    positions[1, [0, 7]] = True
    with torch.no_grad():
        full = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=rotary)
        at = lastlayer.forward_at(layer, hidden, mask, rotary, positions)
    # the same sums over at most 9 keys and 16 features, gathered first: fp32 within a few ulps
    assert torch.allclose(at[positions], full[positions], atol=1e-6), (at[positions] - full[positions]).abs().max()
    assert torch.equal(at[~positions], hidden[~positions])  # elsewhere the input, as documented
    assert not torch.allclose(full[positions], hidden[positions], atol=1e-3)  # the layer did change them


def test_a_last_layer_of_another_shape_runs_in_full():
    from transformers import MistralConfig, MistralModel, Qwen2Config, Qwen2Model, Qwen3Config, Qwen3Model

    from clipdpo.train import lastlayer

    qwen3 = Qwen3Model(
        Qwen3Config(
            vocab_size=32,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=4,
        )
    )
    assert "q_norm" in lastlayer.unsupported_reason(lastlayer.last_layer(qwen3))
    assert lastlayer.install(qwen3) is False and not lastlayer.is_installed(qwen3)
    assert "no `layers`" in lastlayer.unsupported_reason(lastlayer.last_layer(torch.nn.Linear(2, 2)))
    mistral = MistralModel(
        MistralConfig(
            vocab_size=32,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            sliding_window=4,
        )
    )
    assert "sliding-window" in lastlayer.unsupported_reason(lastlayer.last_layer(mistral))
    qwen2 = Qwen2Model(
        Qwen2Config(
            vocab_size=32,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            use_sliding_window=False,
        )
    )
    assert lastlayer.unsupported_reason(lastlayer.last_layer(qwen2)) is None  # its unused window does not count


def test_the_kept_logits_equality_fails_when_each_token_is_read_one_position_late(tiny, monkeypatch):
    """The check below, with the logits kept at the response tokens' own positions instead of the ones before."""
    from clipdpo.train import layouts

    path, _, encoded, pad = tiny
    model = _fresh_model(path)
    batch = collate(encoded, pad)
    predicting = layouts.predicting_positions
    monkeypatch.setattr(layouts, "predicting_positions", lambda labels: predicting(labels).roll(1, 1))
    with torch.no_grad():
        full, kept = (
            layout.logps(model, batch, torch.device("cpu"), model.dtype)[0]
            for layout in (layouts.Concatenated(keep_logits=False), layouts.Concatenated(keep_logits=True))
        )
    assert tolerance_excess(kept, full) > 100, (kept - full).abs().max()  # measured: 4 nats, ~12,000 tolerances


def test_the_concatenated_layout_computes_logits_only_where_a_response_token_is_read(tiny):
    from clipdpo.train import layouts

    path, _, encoded, pad = tiny
    model = _fresh_model(path)
    layout = layouts.choose("concatenated", model)
    assert layout == layouts.Concatenated(keep_logits=True)  # a LLaVA takes a boolean logits_to_keep
    batch = collate(encoded, pad)
    head_rows = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[:-1].numel()))
    weights = torch.linspace(-1.0, 1.0, 2 * len(encoded))
    results = []
    try:
        for kept in (layouts.Concatenated(keep_logits=False), layout):
            model.zero_grad(set_to_none=True)
            sums, means, counts = kept.logps(model, batch, torch.device("cpu"), model.dtype)
            ((weights * sums).sum() + (weights * means).sum()).backward()
            results.append(
                (sums.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            )
    finally:
        hook.remove()
    (full_sums, full_counts, full_grads), (sums, counts, grads) = results
    assert head_rows == [batch["input_ids"].numel(), int(counts.sum())]  # every position, then one per token
    assert counts.tolist() == full_counts.tolist()
    # the same logits rows, summed by index_add: fp32 within summation order (see above)
    assert torch.allclose(sums, full_sums, rtol=1e-5, atol=1e-5), (sums - full_sums).abs().max()
    assert_gradients_match(grads, full_grads)


def test_block_mask_and_positions_by_hand():
    item = prefix.Encoded(torch.tensor([5, 6]), torch.zeros(1, 3, 2, 2), torch.tensor([7, 8]), torch.tensor([9]), False)
    short = prefix.Encoded(torch.tensor([5]), torch.zeros(1, 3, 2, 2), torch.tensor([7]), torch.tensor([9]), False)
    batch = prefix.collate_shared_prefix([item, short], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 7, 9, 0, 0]]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 2]  # the rejected branch restarts after the prefix
    mask = prefix.block_attention_mask(batch["segments"])[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],  # prefix
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # chosen
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],
    ]  # rejected: the prefix and itself, never the chosen tokens
    padded = prefix.block_attention_mask(batch["segments"])[1, 0].int().tolist()
    assert padded[3] == [0, 0, 0, 1, 0] and padded[2] == [1, 0, 1, 0, 0]  # padding sees only itself
    additive = prefix.block_attention_mask(batch["segments"], torch.float32)[0, 0]
    assert additive[4, 2].item() == torch.finfo(torch.float32).min and additive[4, 1].item() == 0.0
    # logits at the prefix's last position (0,1) and chosen's first (0,2); row 1: prefix only (1,0)
    assert batch["logits_mask"].int().tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert batch["target_rows"].tolist() == [0, 1, 0, 2, 2]  # pair 0 chosen x2, pair 0 rejected, pair 1 x2
    assert batch["target_labels"].tolist() == [7, 8, 9, 7, 9]
    assert batch["target_owner"].tolist() == [0, 0, 2, 1, 3]


def test_block_attention_equals_dense_masked_sdpa_with_grouped_query_heads():
    """The per-row path against transformers' SDPA with the dense block mask: 4 query heads on 2
    key/value heads (LLaVA-1.5 has none, later LLaVAs do), two rows of different spans and padding."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    spans, length = [(5, 3, 4), (2, 4, 1)], 12
    segments = torch.tensor(
        [
            [prefix.PREFIX] * p + [prefix.CHOSEN] * c + [prefix.REJECTED] * r + [prefix.PAD] * (length - p - c - r)
            for p, c, r in spans
        ]
    )
    query = torch.randn(2, 4, length, 8)
    key, value = torch.randn(2, 2, length, 8), torch.randn(2, 2, length, 8)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    mask = prefix.block_attention_mask(segments)
    dense, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=0.0, scaling=0.3)
    block, _ = prefix.block_sparse_attention(
        module, query, key, value, mask, dropout=0.0, scaling=0.3, pair_spans=spans
    )
    real = segments != prefix.PAD
    assert block.shape == dense.shape == (2, length, 4, 8)
    # fp32 softmax over <= 12 keys, blocked differently by the two kernels: well inside 1e-6
    assert torch.allclose(block[real], dense[real], atol=1e-6), (block[real] - dense[real]).abs().max()
    assert not torch.allclose(block[real], dense[real].roll(1, 0), atol=1e-3)  # values that tell rows apart


def test_the_block_attention_switch_is_not_saved_with_the_model(tiny, tmp_path):
    from transformers import LlavaForConditionalGeneration

    _, model, _, _ = tiny
    set_attention(model, prefix.BLOCK_ATTENTION)
    model.save_pretrained(str(tmp_path / "saved"))
    assert prefix.BLOCK_ATTENTION not in (tmp_path / "saved" / "config.json").read_text()
    reloaded = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "saved"))
    assert prefix.attention_implementation(reloaded) == "sdpa"


def test_an_unsupported_model_gets_a_clear_message(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, model, _, _ = tiny
    assert prefix.unsupported_reason(model) is None
    text_only = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(prefix.SharedPrefixUnsupported, match="model_type 'llama'.*forward=concatenated"):
        prefix.check_supported(text_only)
    set_attention(model, "flash_attention_2")
    try:
        with pytest.raises(prefix.SharedPrefixUnsupported, match="flash_attention_2.*sdpa"):
            prefix.check_supported(model)
    finally:
        set_attention(model, "sdpa")


def reference_cache_values(uri: str) -> np.ndarray:
    cache = Artifact.open(Storage(), uri, kind="reflogps")
    tables = [table for _, table in cache.iter_shards()]
    rows = sorted(
        (s, r, *v)
        for table in tables
        for s, r, *v in zip(
            table.column("pair_shard").to_pylist(),
            table.column("row").to_pylist(),
            *(
                table.column(c).to_pylist()
                for c in ("chosen_logp", "rejected_logp", "chosen_logp_mean", "rejected_logp_mean")
            ),
        )
    )
    return np.asarray([row[2:] for row in rows])


@pytest.mark.slow  # two training runs: ~10 s
def test_a_short_run_gives_the_same_losses_and_reference_cache_both_ways(tiny, tmp_path):
    from clipdpo.train import run
    from clipdpo.train.config import TrainConfig

    pairs = write_pairs(str(tmp_path / "data"), n_pairs=12, n_shards=2)
    losses, caches = {}, {}
    for forward in ("concatenated", "shared_prefix"):
        cfg = TrainConfig(
            model=tiny[0],
            learning_rate=5e-3,
            global_batch_size=4,
            per_device_batch_size=2,
            max_length=50,
            warmup_ratio=0.0,
            max_steps=3,
            seed=7,
            forward=forward,
            reference_cache=str(tmp_path / f"refcache-{forward}"),
        )
        summary = run(cfg, pairs, str(tmp_path / forward))
        assert summary["forward"] == forward and summary["data"]["pairs_truncated"] > 0
        rows = Storage().read_bytes(str(tmp_path / forward / "metrics.jsonl")).decode().splitlines()
        losses[forward] = [(r["loss"], r["rewards/margin"]) for r in map(json.loads, rows)]
        caches[forward] = reference_cache_values(summary["reference_cache"])
    assert len(losses["concatenated"]) == 3 and len(caches["concatenated"]) == 12
    # after two optimizer steps at lr 5e-3 the policy has moved: margins differ from zero
    assert abs(losses["concatenated"][-1][1]) > 1e-3
    # fp32 log-probs summed in another order (see above), through 3 steps of training: 1e-5
    np.testing.assert_allclose(losses["shared_prefix"], losses["concatenated"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(caches["shared_prefix"], caches["concatenated"], rtol=1e-5, atol=1e-5)
    assert len(np.unique(caches["concatenated"][:, 0])) > 1


def test_povid_runs_concatenated_rows_and_refuses_shared_prefix():
    from clipdpo.train.config import TrainConfig
    from clipdpo.train.recipe import check_config, forward_setting

    povid = dict(method="povid", reference="model", global_batch_size=4, per_device_batch_size=4)
    assert forward_setting(TrainConfig(**povid)) == "concatenated"  # auto: the noisy rows need concatenated rows
    assert forward_setting(TrainConfig(global_batch_size=4, per_device_batch_size=4)) == "auto"
    with pytest.raises(ValueError, match="method=povid.*forward=concatenated"):
        check_config(TrainConfig(**povid, forward="shared_prefix"), world_size=1)
    with pytest.raises(ValueError, match="forward='packed'; expected one of"):
        TrainConfig(forward="packed")

"""Image features computed once: per pair in either layout, and with a frozen vision tower once per run.

A LLaVA-style model turns an image into features in three steps: the vision tower, the selection
of one hidden layer (`vision_feature_layer`, without CLIP's CLS token for the "default" strategy),
and the projector, whose output replaces the image tokens' embeddings. With the tower frozen (the
default, `freeze_vision_tower`), the selected features of an image never change during a run: the
reference pass computes them (no grad), this cache keeps them on the CPU, and the training loop's
batches reuse them, in every epoch, through transformers' `mm_encoder_outputs` (the model then skips
its tower). A frozen reference model (reference=model) reuses the policy's features too: the two
towers are the same frozen weights. Each model applies its own projector to the cached features on
every forward, so a trainable projector trains as before and a frozen one costs what it always did
(a two-layer MLP: ~0.3% of LLaVA-1.5-7B's forward). With the cache, the concatenated layout too encodes
each image once and gives its features to both rows of the pair (without it, each row encodes its image,
as the model's own forward does; the shared prefix has one row, so one encode, per pair either way).

Not cached (the model encodes in its own forward, as before; `disabled_reason` says why): a
trainable tower (its output changes every step), POVID's two stages (their noisy-image rows go through
the model's image path) and `image_feature_cache_mb=0`. Past the byte budget, new images are
encoded every time they are used (logged once). Each rank keeps its own cache: with several ranks,
an image is encoded at most once in the reference pass and once per rank that trains on it. Under
DeepSpeed ZeRO-3 the tower's partitioned weights are gathered collectively, so all ranks must run it
together: `any_rank_missing` tells each rank whether any rank lacks an image of its batch, and then
every rank runs the tower (one whose batch is all cached encodes it anyway and keeps what it had).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from clipdpo.train.prefix import _base_model, image_token_types

log = logging.getLogger("clipdpo.train")


def _llava_parts(model):
    """(vision tower, projector, config) of a LLaVA-style model, or None when it has no such parts."""
    base = _base_model(model)
    inner = getattr(base, "model", None)
    tower, projector = getattr(inner, "vision_tower", None), getattr(inner, "multi_modal_projector", None)
    if tower is None or projector is None or not hasattr(base.config, "vision_feature_layer"):
        return None
    return tower, projector, base.config


def disabled_reason(model, *, two_stage: bool, budget_mb: int) -> str | None:
    """Why this run cannot cache image features, or None when it can."""
    parts = _llava_parts(model)
    if budget_mb <= 0:
        return "image_feature_cache_mb=0"
    if parts is None:
        return f"{type(_base_model(model)).__name__} has no vision_tower / multi_modal_projector / vision_feature_layer"
    if any(p.requires_grad for p in parts[0].parameters()):
        return "the vision tower trains (freeze_vision_tower=false): its features change every step"
    if two_stage:
        return "POVID's noisy-image rows go through the model's own image path"
    return None


def select_features(tower_output, layer: int | list[int], strategy: str) -> torch.Tensor:
    """The hidden states the projector reads, as LlavaModel.get_image_features selects them."""
    layers = [layer] if isinstance(layer, int) else list(layer)
    states = [tower_output.hidden_states[k] for k in layers]
    if strategy == "default":  # CLIP's CLS token is not an image token
        states = [s[:, 1:] for s in states]
    return states[0] if len(states) == 1 else torch.cat(states, dim=-1)


@torch.no_grad()
def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[n, image tokens, tower features]: the frozen tower's selected features (before the projector)."""
    tower, _, config = _llava_parts(model)
    output = tower(pixel_values, output_hidden_states=True, return_dict=True)
    return select_features(output, config.vision_feature_layer, config.vision_feature_select_strategy)


def project(model, features: torch.Tensor, copies: int = 1) -> dict:
    """`mm_encoder_outputs` for `model`'s forward: its projector on `features` [n, tokens, d], the n images
    repeated `copies` times in order (the concatenated layout's chosen rows, then its rejected rows)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    _, projector, _ = _llava_parts(model)
    projected = projector(features)
    # the model's forward reads one tensor per image here; transformers annotates pooler_output as one tensor
    return {"image": BaseModelOutputWithPooling(pooler_output=list(projected) * copies)}  # type: ignore[arg-type]


def image_inputs(model, batch: dict, device: torch.device, dtype: torch.dtype, copies: int) -> dict:
    """The forward's image arguments: cached features when the batch carries them, else its pixel_values
    (`copies` only applies to features: pixel_values are already one per row). Dynamic-resolution images
    (Qwen VL) add their patch grids and which tokens are image tokens: from those the model places each
    image token in its grid for its multimodal rotary positions (without them it would count 1-D positions)."""
    features = batch.get("image_features")
    if features is None:
        inputs = {"pixel_values": batch["pixel_values"].to(device, dtype)}
        if "image_grid_thw" in batch:
            inputs["image_grid_thw"] = batch["image_grid_thw"].to(device)
            inputs["mm_token_type_ids"] = image_token_types(model, batch["input_ids"]).to(device)
        return inputs
    return {"mm_encoder_outputs": project(model, features.to(device, dtype), copies)}


class ImageFeatureCache:
    """Selected tower features per image number (PairStore's `image_ids`), kept on the CPU up to a budget."""

    def __init__(self, model, budget_bytes: int, any_rank_missing: Callable[[bool], bool] | None = None):
        self.model = model
        self.budget_bytes = budget_bytes
        self.any_rank_missing = any_rank_missing  # ZeRO-3: all ranks run the tower together (see above)
        self.features: dict[int, torch.Tensor] = {}
        self.bytes = 0
        self.encoded = 0  # images run through the tower
        self.reused = 0  # images served from the cache
        self._full_logged = False

    def lookup(
        self, image_ids: torch.Tensor, pixel_values: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """[n, tokens, d] features of the n images (one pixel_values row each), encoding the ones not kept."""
        ids = image_ids.tolist()
        missing = [i for i, number in enumerate(ids) if number not in self.features]
        run_tower = bool(missing) if self.any_rank_missing is None else self.any_rank_missing(bool(missing))
        fresh = {}
        if run_tower:
            todo = missing or list(range(len(ids)))  # nothing missing here, but another rank needs the tower
            encoded = encode_images(self.model, pixel_values[todo].to(device, dtype))
            self.encoded += len(todo)
            fresh = {ids[i]: encoded[k] for k, i in enumerate(todo) if i in missing}
            for number, value in fresh.items():
                self._keep(number, value)
        self.reused += len(ids) - len(missing)
        rows = [fresh[number] if number in fresh else self.features[number].to(device) for number in ids]
        return torch.stack(rows)

    def _keep(self, number: int, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.bytes + size > self.budget_bytes:
            if not self._full_logged:
                log.info(
                    "image feature cache full (%d images, %.0f MiB): further images are encoded each time",
                    len(self.features),
                    self.bytes / 2**20,
                )
                self._full_logged = True
            return
        # a copy of its own (off a GPU, or out of the batch's tensor, which it would otherwise keep alive)
        self.features[number] = value.to("cpu", copy=True)
        self.bytes += size

    def attach(self, batch: dict, pair_images, device: torch.device, dtype: torch.dtype) -> dict:
        """`batch` with `image_features` [pairs, tokens, d]; `pair_images(batch)`: one pixel_values row per pair."""
        features = self.lookup(batch["image_ids"], pair_images(batch), device, dtype)
        return {**batch, "image_features": features}

    def summary(self) -> dict:
        return {
            "cached": True,
            "encoded": self.encoded,
            "reused": self.reused,
            "kept": len(self.features),
            "kept_mib": round(self.bytes / 2**20, 1),
        }

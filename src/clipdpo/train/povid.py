"""POVID's objective (Eq. 5): DPO on the pairs' text dispreferences, plus the policy's own answers on a
diffusion-noised image (Eq. 4) as a second dispreferred response, scored on that noised image by the
policy and the reference alike.

The noisy-image rejection y_n follows the paper (Sec. 3.2): token i is the argmax of
pi_theta(. | x_n, y_w,<i), i.e. one teacher-forced, gradient-free forward of the current policy on
(noised image, preferred answer), not an autoregressive generate. That is also why it works
unchanged under ZeRO-3: it is an ordinary forward, so DeepSpeed's hooks gather each sharded layer as
in training, and every rank runs exactly one such forward per micro-batch (an autoregressive generate
would stop at different lengths on different ranks and hang the parameter gathers unless run with
synced_gpus). The policy, not the unsharded reference, generates: Eq. 5's y_n is the *current*
policy's hallucination, which the paper regenerates during training because it moves as the policy
trains; the reference's would be fixed, i.e. precomputable data.

Stage 1 (the first povid.stage1_epochs) is plain DPO on the pairs; stage 2 is Eq. 5. A pair's y_n is reused
until it is `povid.noisy_every` steps old (1 = on-policy every step). The noise of pair p at step s is seeded
by (seed, s, p), so every rank and a resumed run draw the same noised image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clipdpo.train.backends import Backend
from clipdpo.train.config import TrainConfig
from clipdpo.train.layouts import Batch
from clipdpo.train.logps import IGNORE_INDEX
from clipdpo.train.noise import add_diffusion_noise
from clipdpo.train.objective import DPOObjective, Losses
from clipdpo.train.povid_loss import povid_loss
from clipdpo.train.prefix import _base_model

RGB = 3  # the channels of a processor's pixel values


def noise_seed(seed: int, step: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, step, int(position)]).generate_state(1)[0])


def noised_images(
    pixel_values: torch.Tensor,
    positions: np.ndarray,
    step: int,
    k: int,
    seed: int,
    image_grid: torch.Tensor | None = None,
    frames: int = 1,
) -> torch.Tensor:
    """Eq. 4 on each pair's image, seeded by (seed, step, position): a row each of a fixed-size [n, 3, H, W], or
    with `image_grid` [n, 3] each image's patch rows of a dynamic-resolution [patches, 3 x frames x P x P] (Qwen
    VL's layout: channel, frame, pixel), whose `frames` copies of each pixel get the same noise."""
    if image_grid is None:
        rows = [add_diffusion_noise(x.cpu(), k, noise_seed(seed, step, p)) for x, p in zip(pixel_values, positions)]
        return torch.stack(rows).to(pixel_values.device)
    images = torch.split(pixel_values.cpu(), image_grid.prod(-1).tolist())
    noised = [
        add_diffusion_noise(x.reshape(len(x), RGB, frames, -1), k, noise_seed(seed, step, p), copies_dim=2)
        for x, p in zip(images, positions)
    ]
    return torch.cat([x.reshape(len(x), -1) for x in noised]).to(pixel_values.device)


def chosen_images(batch: dict, n: int) -> dict:
    """The images of a concatenated batch's first n rows (the chosen ones, one per pair): pixel_values, and for
    dynamic-resolution images their grids (image_grid_thw) and the patches those cover."""
    grids = batch.get("image_grid_thw")
    if grids is None:
        return {"pixel_values": batch["pixel_values"][:n]}
    patches = int(grids[:n].prod(-1).sum())
    return {"pixel_values": batch["pixel_values"][:patches], "image_grid_thw": grids[:n]}


def teacher_forced_answers(logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """input_ids with every response token t replaced by argmax logits[t - 1]: the model's own choice after the
    preferred answer's prefix (Sec. 3.2). Prompt, image and padding tokens are kept."""
    predicted = torch.cat([input_ids[:, :1], logits[:, :-1].argmax(-1)], dim=1)
    return torch.where(labels != IGNORE_INDEX, predicted, input_ids)


def image_frames(model) -> int:
    """How many temporal copies of a still image a Qwen VL's processor writes (its vision config's
    temporal_patch_size); 1 for a model without one."""
    vision = getattr(getattr(_base_model(model), "config", None), "vision_config", None)
    return int(getattr(vision, "temporal_patch_size", None) or 1)


@dataclass
class POVIDObjective:
    """Stage 1: `text` (DPO on the pairs). Stage 2 (from step `stage2_start`): Eq. 5."""

    text: DPOObjective  # needs a reference model: y_n changes, so its reference log-probs cannot be cached
    stage2_start: int
    alpha: float
    beta_1: float
    beta_2: float
    noise_step: int
    noisy_every: int
    seed: int
    image_frames: int = 1  # copies of each pixel in a dynamic-resolution image's patch rows (Qwen VL: 2)
    answers: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)  # position -> (step, y_n tokens)
    # this rank's noisy answers made: how many, their tokens, how many of those differ from the preferred answer's
    made: list[int] = field(default_factory=lambda: [0, 0, 0])

    @classmethod
    def from_config(cls, cfg: TrainConfig, text: DPOObjective, steps_per_epoch: int) -> "POVIDObjective":
        povid = cfg.povid
        return cls(
            text,
            steps_per_epoch * povid.stage1_epochs,
            povid.alpha,
            povid.beta_1,
            povid.beta_2,
            povid.noise_step,
            povid.noisy_every,
            cfg.seed,
            image_frames(text.reference_model),
        )

    def summary(self) -> dict:
        answers, tokens, changed = self.made
        return {
            "noisy_answers_made": answers,
            "noisy_answer_tokens": tokens,
            "noisy_tokens_changed_fraction": round(changed / tokens, 4) if tokens else None,
        }

    def losses(self, policy: Backend, batch: Batch, positions: np.ndarray, step: int = 0) -> Losses:
        """`policy`: the backend; its `forward` gives a concatenated batch's logits (recipe.forward_setting
        keeps two-stage runs on the concatenated layout: the noisy rows are built from its rows)."""
        forward = policy.forward
        if step < self.stage2_start:
            return self.text.losses(policy, batch, positions, step)
        n, joint = len(positions), batch
        if self.beta_2:  # beta_2 = 0 (the ablation): no noisy term, nothing to generate
            noisy = self._noisy_rows(forward, batch, positions, step)
            joint = {
                key: torch.cat([batch[key], noisy[key]])
                for key in ("input_ids", "attention_mask", "labels", "pixel_values", "image_grid_thw")
                if key in batch
            }
        device = batch["input_ids"].device
        assert self.text.layout is not None  # a reference model's objective has its layout (from_config)
        policy_logps, _, _ = policy.logps(joint)  # the backend's layout: concatenated rows (see above)
        with torch.no_grad():
            reference, _, _ = self.text.layout.logps(self.text.reference_model, joint, device, self.text.model_dtype)
        ratios = policy_logps - reference.to(policy_logps.dtype)
        return povid_loss(
            ratios[:n],
            ratios[n : 2 * n],
            ratios[2 * n :] if self.beta_2 else None,
            alpha=self.alpha,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
        )

    def _noisy_rows(self, forward, batch: dict, positions: np.ndarray, step: int) -> dict:
        """The batch rows of (noised image, y_n): the chosen rows' prompt and layout, y_n's tokens as labels."""
        n, images = len(positions), chosen_images(batch, len(positions))
        grid = images.get("image_grid_thw")
        pixels = noised_images(
            images["pixel_values"], positions, step, self.noise_step, self.seed, grid, self.image_frames
        )
        noisy = {
            **images,
            "pixel_values": pixels,
            "attention_mask": batch["attention_mask"][:n],
            "labels": batch["labels"][:n],
        }
        noisy["input_ids"] = self._noisy_answers(forward, batch, noisy, positions, step)
        noisy["labels"] = torch.where(noisy["labels"] != IGNORE_INDEX, noisy["input_ids"], noisy["labels"])
        return noisy

    def _noisy_answers(self, forward, batch: dict, noisy: dict, positions: np.ndarray, step: int) -> torch.Tensor:
        """y_n of each pair (input ids on the chosen rows' layout): reused while younger than noisy_every steps."""
        n, chosen_ids = len(positions), batch["input_ids"][: len(positions)]
        response = noisy["labels"] != IGNORE_INDEX
        cached = [self.answers.get(int(p)) for p in positions]
        fresh = [c for c in cached if c is not None and step - c[0] < self.noisy_every]
        if len(fresh) == n:
            out = chosen_ids.clone()
            for i in range(n):
                out[i][response[i]] = fresh[i][1].to(out.device)
            return out
        with torch.no_grad():
            logits = forward(
                {
                    "input_ids": chosen_ids,
                    **{key: noisy[key] for key in ("attention_mask", "pixel_values", "image_grid_thw") if key in noisy},
                }
            )
        out = teacher_forced_answers(logits, chosen_ids.to(logits.device), noisy["labels"].to(logits.device))
        mask = response.to(out.device)
        self.made = [
            self.made[0] + n,
            self.made[1] + int(mask.sum()),
            self.made[2] + int((out != chosen_ids.to(out.device))[mask].sum()),
        ]
        for i, p in enumerate(positions):
            self.answers[int(p)] = (step, out[i][response[i].to(out.device)].cpu())
        return out.to(chosen_ids.device)

"""TrainConfig: every training setting, defaults from the paper (Sec. 5 and 7.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clipdpo.config import (
    AT_LEAST_1,
    FRACTION,
    NON_NEGATIVE,
    NOT_IN_KEY,
    POSITIVE,
    SEED,
    ConfigError,
    Range,
    check_ranges,
)
from clipdpo.train.loss import check_loss_type

LLAVA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class PovidTrainConfig:
    """POVID's two stages (`train.povid.*`; used by method povid | both): stage 1 DPO on the pairs for
    stage1_epochs, stage 2 Eq. 5 with noisy-image rejections for stage2_epochs."""

    stage1_epochs: int = 3  # the paper's Sec. 4.1: 3 epochs, then 1
    stage2_epochs: int = 1
    alpha: float = 0.1  # Eq. 5's weights (the paper does not state them; DPO's beta as default)
    beta_1: float = 0.1  # text dispreference
    beta_2: float = 0.1  # noisy-image dispreference; 0 = stage 2 is text-only DPO
    noise_step: int = 500  # Eq. 4's k (Table 5), 0..999
    noisy_every: int = 1  # regenerate a pair's noisy-image rejection when older than this many steps

    # noise_step: Eq. 4's schedule has 1000 steps
    RANGES = {
        "stage1_epochs": NON_NEGATIVE,
        "stage2_epochs": AT_LEAST_1,
        "alpha": NON_NEGATIVE,
        "beta_1": NON_NEGATIVE,
        "beta_2": NON_NEGATIVE,
        "noise_step": Range(0, 999),
        "noisy_every": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        check_ranges(self)

    # The names these fields had in the flat TrainConfig: the output fingerprint keeps them (flat_fields),
    # so that a run trained before they were grouped here is still recognised as the same run.
    FLAT_NAMES = {
        "stage1_epochs": "stage1_epochs",
        "stage2_epochs": "stage2_epochs",
        "alpha": "povid_alpha",
        "beta_1": "povid_beta_1",
        "beta_2": "povid_beta_2",
        "noise_step": "noise_step",
        "noisy_every": "noisy_every",
    }

    def flat_fields(self) -> dict[str, int | float]:
        return {flat: getattr(self, name) for name, flat in self.FLAT_NAMES.items()}


@dataclass
class TrainConfig:
    # model
    model: str = "llava-hf/llava-1.5-7b-hf"  # Hugging Face id or a folder / s3:// prefix in HF format
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto = bfloat16 on GPU, float32 on CPU
    finetune: str = "full"  # full | lora
    lora_r: int = 128  # LLaVA-1.5's LoRA recipe
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLAVA_LORA_TARGETS))
    freeze_vision_tower: bool = True
    train_projector: bool = True
    gradient_checkpointing: bool = False

    # objective
    loss_type: str = "sigmoid"  # sigmoid (DPO / cDPO) | ipo | hinge (SLiC) | kto_pair
    beta: float = 0.1
    label_smoothing: float = 0.0  # > 0 with sigmoid = cDPO (the paper's 0.1)
    # RPO (Pang et al. 2024; TRL's rpo_alpha): + rpo_alpha x the chosen response's per-token NLL, which keeps
    # the chosen captions' likelihood from falling with the rejected ones (DPO's known failure mode)
    rpo_alpha: float = 0.0
    reference: str = "precompute"  # precompute (one pass, cached on S3) | model (frozen copy each step)
    # shared_prefix: image + prompt run once per pair and both responses continue from them in one
    # packed row; concatenated: a row per response; auto: shared_prefix where the model supports it
    # `forward` changes only the summation order of the same log-probs (tests/clipdpo/test_shared_prefix.py)
    forward: str = field(default="auto", metadata=NOT_IN_KEY)

    # method: clipdpo = DPO on the pairs for `epochs`; povid | both = POVID's two stages as one run (the
    # pairs hold POVID's text dispreferences, or CLIP-DPO pairs plus them for both), set in `povid`
    # (`epochs` unused)
    method: str = "clipdpo"
    povid: PovidTrainConfig = field(default_factory=PovidTrainConfig)

    # optimisation
    learning_rate: float = 5e-7
    warmup_ratio: float = 0.01
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    epochs: int = 1
    global_batch_size: int = 256  # = per_device_batch_size x grad accumulation x world size
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 0  # 0 = derived from the two above and the world size
    max_steps: int = 0  # > 0 stops early (smoke runs)
    seed: int = 42

    # data
    max_length: int = 2048  # prompt (incl. image tokens) + response, in tokens
    on_bad_pair: str = "skip"  # skip | error: empty response, missing image, prompt too long
    truncate_responses: bool = True  # cut over-long responses at the end (counted); false = bad pair

    # distribution and outputs
    strategy: str = "auto"  # auto (deepspeed on GPU, ddp on CPU) | ddp | deepspeed
    zero_stage: int = 3
    save_steps: int = field(default=200, metadata=NOT_IN_KEY)  # checkpoint every N optimizer steps (and at the end)
    keep_checkpoints: int = field(default=2, metadata=NOT_IN_KEY)
    log_steps: int = field(default=1, metadata=NOT_IN_KEY)
    save_merged: bool = True  # LoRA: also save the merged full model
    reference_cache: str = field(default="", metadata=NOT_IN_KEY)  # "" = <pairs>/refcache/<key>; or a prefix
    # per rank, CPU memory for a frozen vision tower's image features, computed once per run and reused
    # (imagefeatures.py; LLaVA-1.5: 576 x 1024 values = 1.2 MB per image in bf16); 0 = encode on every use
    # (whether a frozen tower's features are recomputed or reused decides nothing trained:
    # tests/clipdpo/test_image_features.py)
    image_feature_cache_mb: int = field(default=4096, metadata=NOT_IN_KEY)
    # how long a rank waits in a collective before its process is torn down and the job restarts from its last
    # checkpoint (init_process_group's timeout): the ranks wait at barriers while a node's first rank downloads
    # a checkpoint or uploads one, which for a 7B model can outlast PyTorch's NCCL default of 10 minutes
    collective_timeout_minutes: int = field(default=60, metadata=NOT_IN_KEY)

    RANGES = {
        "lora_r": AT_LEAST_1,
        "lora_alpha": POSITIVE,
        "lora_dropout": Range(0, 1, high_open=True),
        "beta": POSITIVE,
        "label_smoothing": Range(0, 0.5, high_open=True),  # cDPO: flip probability < 1/2
        "rpo_alpha": NON_NEGATIVE,
        "learning_rate": POSITIVE,
        "warmup_ratio": FRACTION,
        "weight_decay": NON_NEGATIVE,
        "adam_beta1": Range(0, 1, high_open=True),
        "adam_beta2": Range(0, 1, high_open=True),
        "adam_epsilon": POSITIVE,
        "max_grad_norm": POSITIVE,
        "epochs": AT_LEAST_1,
        "global_batch_size": AT_LEAST_1,
        "per_device_batch_size": AT_LEAST_1,
        "gradient_accumulation_steps": NON_NEGATIVE,  # 0: derived
        "max_steps": NON_NEGATIVE,
        "seed": SEED,  # max_steps 0: no early stop
        "max_length": AT_LEAST_1,
        "zero_stage": Range(0, 3),
        "save_steps": AT_LEAST_1,
        "keep_checkpoints": NON_NEGATIVE,
        "log_steps": AT_LEAST_1,  # keep_checkpoints 0: keep every one
        "image_feature_cache_mb": NON_NEGATIVE,  # 0: encode on every use
        "collective_timeout_minutes": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        check_ranges(self)
        check_loss_type(self.loss_type)
        choices = {
            "finetune": ("full", "lora"),
            "reference": ("precompute", "model"),
            "on_bad_pair": ("skip", "error"),
            "strategy": ("auto", "ddp", "deepspeed"),
            "dtype": ("auto", "float32", "bfloat16", "float16"),
            "method": ("clipdpo", "povid", "both"),
            "forward": ("auto", "shared_prefix", "concatenated"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {list(valid)}")
        if not isinstance(self.povid, PovidTrainConfig):
            raise ValueError(f"povid must be a PovidTrainConfig, got {type(self.povid).__name__}")
        if self.method != "clipdpo" and self.epochs != 1:
            raise ValueError(
                f"method={self.method} trains povid.stage1_epochs + povid.stage2_epochs; "
                f"epochs={self.epochs} would be ignored: leave it at 1"
            )


def check_rounds(cfg: TrainConfig, rounds: int) -> None:
    """Iterative rounds (clipdpo.rounds) start each round after the first from the model the round before saved:
    a LoRA run of several rounds must save the merged model, as an adapter alone is no model to start from."""
    if rounds > 1 and cfg.finetune == "lora" and not cfg.save_merged:
        raise ConfigError(
            f"train_config.save_merged: with {rounds} rounds and finetune lora, each round after the first starts "
            "from the merged model the round before saved; set it true"
        )


def is_two_stage(cfg: TrainConfig) -> bool:
    return cfg.method in ("povid", "both")


def run_epochs(cfg: TrainConfig) -> int:
    """Epochs of the whole run: both POVID stages, or `epochs`."""
    return cfg.povid.stage1_epochs + cfg.povid.stage2_epochs if is_two_stage(cfg) else cfg.epochs


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step, so that per-device x accumulation x world = global batch."""
    per_step = cfg.per_device_batch_size * world_size
    if cfg.global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} is not divisible by per_device_batch_size "
            f"{cfg.per_device_batch_size} x world size {world_size} = {per_step}"
        )
    derived = cfg.global_batch_size // per_step
    if cfg.gradient_accumulation_steps and cfg.gradient_accumulation_steps != derived:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} != per_device_batch_size {cfg.per_device_batch_size} x "
            f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} x world size {world_size}"
        )
    return derived

"""Configuration of the InstEmb-style trainer: look-ahead soft prompts, teacher distillation, multi-view InfoNCE."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoreg_embed.losses.distillation import DISTILLATION_METRICS, DISTILLATION_TARGETS, POSITIVE_VIEWS, TEACHER_VIEW
from autoreg_embed.modeling.settings import EncoderSettings, LastTokenPosition, Pooling
from autoreg_embed.trainers.base_config import EncoderTrainingConfig

DISTILL_LAYOUT = {"num_compress_tokens": 8, "pooling": "daap", "last_token_position": "before_compress"}
"""The layout options a DistillConfig uses where they are not set (and the model is not an autoreg-embed
checkpoint, whose saved settings apply instead)."""


@dataclass
class DistillConfig(EncoderTrainingConfig):
    """Options of :class:`~autoreg_embed.DistillTrainer` (InstEmb, METHOD.md §2; equations in ``docs/distill.md``).

    The soft prompts are the compress tokens of the other trainers: ``num_compress_tokens`` (m, default 8) of them
    follow text + instruction, initialised by ``compress_token_init``. The primary anchor is the last input token
    (``last_token_position="before_compress"``: the last text/instruction token, which under causal attention does
    not see the soft prompts) or the final position (``"final"``). The embedding is ``daap`` pooling by default
    (anchor + mean soft-prompt state, see ``daap_combination`` / ``daap_weight``). What trains: everything
    (default), LoRA + the soft-prompt rows (pass a ``peft_config``), or the soft-prompt rows alone
    (``freeze_backbone``, with ``last_token_position="final"``).
    """

    num_compress_tokens: int | None = field(
        default=None, metadata={"help": "m, the number of look-ahead soft prompts. Unset: 8 (or a checkpoint's k)."}
    )
    pooling: Pooling | None = field(
        default=None,
        metadata={"help": "Embedding pooling saved with the model. Unset: daap (or a checkpoint's pooling)."},
    )
    last_token_position: LastTokenPosition | None = field(
        default=None,
        metadata={
            "help": "The primary anchor: the last input (text/instruction) token, before_compress, or the final "
            "position, final (the last soft prompt, which sees the soft prompts; needed with freeze_backbone). Unset: "
            "before_compress (or a checkpoint's)."
        },
    )
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "Train only the soft-prompt embedding rows (PEFT TrainableTokens); the LLM stays frozen."},
    )
    positive_views: list[str] = field(
        default_factory=lambda: ["dropout", "teacher", "output"],
        metadata={"help": f"Positive views of the contrastive loss on the last-token anchor: {POSITIVE_VIEWS}."},
    )
    contrastive_weight: float = field(default=1.0, metadata={"help": "Weight of the (view-averaged) InfoNCE loss."})
    distillation_weight: float = field(default=1.0, metadata={"help": "Weight of the representation distillation."})
    distillation_target: str = field(
        default="mean",
        metadata={
            "help": f"{DISTILLATION_TARGETS}: the teacher's mean output-span state vs the mean soft-prompt state, or "
            "soft prompt j vs the teacher's state at output token j."
        },
    )
    distillation_metric: str = field(
        default="cosine", metadata={"help": f"Distance of student and teacher states: {DISTILLATION_METRICS}."}
    )
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature."})
    in_batch_negatives: bool = field(
        default=True, metadata={"help": "Use the other rows' positives (and hard negatives) as negatives too."}
    )
    gather_across_processes: bool = field(
        default=False,
        metadata={"help": "With in-batch negatives, gather the positives of all processes (with gradient)."},
    )
    dropout_view_rate: float = field(
        default=0.1,
        metadata={"help": "Dropout on the input embeddings of the dropout view's second pass (SimCSE view)."},
    )
    output_instruction: str = field(
        default="", metadata={"help": "Instruction of outputs, pos and neg embedded as documents (default: none)."}
    )
    teacher_output_prefix: str = field(
        default="\n", metadata={"help": "Text between the teacher's text + instruction and the gold output."}
    )
    max_output_length: int = field(default=128, metadata={"help": "Max tokens of each output (teacher and document)."})
    precompute_teacher_targets: bool = field(
        default=False,
        metadata={"help": "Run the teacher once before training, cache its targets on disk, and release it."},
    )
    teacher_targets_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder of cached teacher targets (default: the autoreg-embed cache)."}
    )
    learning_rate: float = field(
        default=2e-5, metadata={"help": "Peak learning rate (soft prompts alone usually want ~1e-3)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimisation steps."})

    def __post_init__(self) -> None:
        if isinstance(self.positive_views, str):
            self.positive_views = [view.strip() for view in self.positive_views.split(",") if view.strip()]
        unknown = [view for view in self.positive_views if view not in POSITIVE_VIEWS]
        if unknown or len(set(self.positive_views)) != len(self.positive_views):
            raise ValueError(f"positive_views must be distinct names from {POSITIVE_VIEWS}, got {self.positive_views}.")
        for name in ("contrastive_weight", "distillation_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.contrastive_weight > 0 and not self.positive_views:
            raise ValueError("contrastive_weight > 0 needs at least one positive view (or set contrastive_weight=0).")
        if not (self.contrastive_weight > 0 or self.distillation_weight > 0):
            raise ValueError("contrastive_weight and distillation_weight are both 0: nothing to train.")
        if not self.in_batch_negatives and TEACHER_VIEW in self.positive_views:
            raise ValueError("The 'teacher' view has no hard negatives; it needs in_batch_negatives=True.")
        choices = {
            "distillation_target": (self.distillation_target, DISTILLATION_TARGETS),
            "distillation_metric": (self.distillation_metric, DISTILLATION_METRICS),
        }
        for option, (value, valid) in choices.items():
            if value not in valid:
                raise ValueError(f"{option} must be one of {list(valid)}, got {value!r}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not 0.0 <= self.dropout_view_rate < 1.0:
            raise ValueError(f"dropout_view_rate must be in [0, 1), got {self.dropout_view_rate}.")
        if self.max_output_length < 1:
            raise ValueError(f"max_output_length must be >= 1, got {self.max_output_length}.")
        super().__post_init__()
        self.check_layout(self.encoder_settings())

    def encoder_settings(
        self,
        base_model_name_or_path: str | None = None,
        saved: EncoderSettings | None = None,
        checkpoint: str | None = None,
    ) -> EncoderSettings:
        """As :meth:`EncoderTrainingConfig.encoder_settings`, with :data:`DISTILL_LAYOUT` for the options not set
        when the model is not a checkpoint."""
        if saved is None:
            return EncoderSettings(
                **{**DISTILL_LAYOUT, **self.layout_choices()}, base_model_name_or_path=base_model_name_or_path
            )
        return super().encoder_settings(base_model_name_or_path, saved, checkpoint)

    def check_layout(self, settings: EncoderSettings) -> None:
        """Raise ``ValueError`` if the losses and training mode cannot work with ``settings`` (checked again with a
        checkpoint's settings when the trainer starts from one)."""
        if self.distillation_weight > 0 and settings.num_compress_tokens == 0:
            raise ValueError(
                "distillation_weight > 0 distils into the soft prompts, but num_compress_tokens=0. Set "
                "distillation_weight=0 for the last-token-only model."
            )
        if self.freeze_backbone and settings.num_compress_tokens == 0:
            raise ValueError("freeze_backbone trains only the soft prompts; it needs num_compress_tokens >= 1.")
        if self.freeze_backbone and self.contrastive_weight > 0 and settings.last_token_position == "before_compress":
            raise ValueError(
                "With freeze_backbone the anchor before the soft prompts cannot change, so the contrastive loss would "
                "train nothing: set last_token_position='final' (or contrastive_weight=0)."
            )
        settings.split_template(self.output_instruction)  # a template without {instruction} slot

    @property
    def needs_teacher(self) -> bool:
        """Whether the loss uses the teacher (distillation, or the teacher view)."""
        return self.distillation_weight > 0 or (self.contrastive_weight > 0 and TEACHER_VIEW in self.positive_views)

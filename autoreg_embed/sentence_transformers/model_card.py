"""The README.md model card written next to every exported or trainer-saved checkpoint.

It follows the layout of sentence-transformers' own model cards (Model Details, Usage, Evaluation, Training
Details, Framework Versions, Citation) and adds what is particular to autoreg-embed: the encoder layout, the
prompts as instructions, and one section per training stage with its data size, method options and
hyper-parameters, each stage citing the paper of its trainer (BibTeX).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from enum import Enum
from typing import Any

from autoreg_embed.modeling.settings import EncoderSettings
from autoreg_embed.options import declared_options

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TIMING_METRICS = ("_runtime", "_samples_per_second", "_steps_per_second")
KEY_HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "seed",
    "bf16",
)
"""Training hyper-parameters the model card always lists (others only when they differ from the default)."""

_PRESENTATION_OPTIONS = (
    "output_dir",
    "logging_",
    "save_",
    "report_to",
    "disable_tqdm",
    "run_name",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_",
    "dataloader_",
    "use_cpu",
    "overwrite_output_dir",
    "remove_unused_columns",
    "label_names",
    "accelerator_config",
)
"""Prefixes of Trainer options that say where or how a run reports, not what it learned; left out of the card."""

AUTOREGEMBED_BIBTEX = """@inproceedings{deng2025autoregembed,
  title = {Following the Autoregressive Nature of LLM Embeddings via Compression and Alignment},
  author = {Deng, Jingcheng and Jiang, Zhongtao and Pang, Liang and others},
  booktitle = {Proceedings of the 2025 Conference on Empirical Methods in Natural Language Processing},
  year = {2025},
  eprint = {2502.11401},
  archivePrefix = {arXiv}
}"""

INFONCE_BIBTEX = """@article{oord2018cpc,
  title = {Representation Learning with Contrastive Predictive Coding},
  author = {van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  journal = {arXiv preprint arXiv:1807.03748},
  year = {2018}
}"""

TRAINER_CITATIONS: dict[str, tuple[str, ...]] = {
    "CompressionTrainer": (AUTOREGEMBED_BIBTEX,),
    "CDATrainer": (AUTOREGEMBED_BIBTEX,),
    "ContrastiveTrainer": (INFONCE_BIBTEX,),
}
"""The papers (BibTeX) each trainer implements, keyed by the trainer class name; a new trainer adds its entry."""

TRAINER_DESCRIPTIONS: dict[str, str] = {
    "CompressionTrainer": "AutoRegEmbed stage 1, information compression: the frozen original LLM regenerates a "
    "target text from the k compress states",
    "CDATrainer": "AutoRegEmbed stage 2, conditional distribution alignment: a DPO-style InfoNCE loss over the "
    "frozen decoder's log-probabilities under query and document embeddings",
    "ContrastiveTrainer": "the InfoNCE baseline: cosine contrastive loss on the pooled embedding",
}
"""One line per trainer for the card's stage list."""


def latest_eval_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The numeric ``eval_*`` metrics of the most recent evaluation in a Trainer's ``state.log_history``.

    Timing entries (runtime, samples/steps per second) are left out; an empty dict when nothing was evaluated.
    """
    for entry in reversed(log_history):
        metrics = {
            key: float(value)
            for key, value in entry.items()
            if key.startswith("eval_") and isinstance(value, int | float) and not key.endswith(_TIMING_METRICS)
        }
        if metrics:
            return metrics
    return {}


def _plain(value: Any) -> Any:
    """An option value as JSON can hold it (enums as their values)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _field_default(field: Any) -> Any:
    return field.default_factory() if callable(field.default_factory) else field.default


def _options(args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method options, training hyper-parameters) of a trainer config, as JSON-ready values.

    Method options are the fields autoreg-embed classes add to ``TrainingArguments`` that are set (they define the
    method, so they are shown even at their defaults; unset layout options resolve to the encoder settings, which
    the card shows in its own table). Training hyper-parameters are :data:`KEY_HYPERPARAMETERS` plus every other
    ``TrainingArguments`` option whose value differs from its field default (unset values such as ``None``, ``""``
    and ``[]`` count as equal), leaving out options that only say where or how a run reports
    (:data:`_PRESENTATION_OPTIONS`) and secrets (``*token*``). No config is built here: a ``TrainingArguments``
    created during training would reset the running Accelerator's state.
    """
    from transformers import TrainingArguments

    trainer_fields = {field.name: field for field in fields(TrainingArguments)}
    own_fields = {field.name: field for field in fields(args)}
    declared = set(declared_options(type(args)))
    values = {name: _plain(value) for name, value in args.to_dict().items()}
    method = {  # unset options (None) are left out: the layout table shows the values the encoder uses
        # read from the config itself: to_dict() hides every "*_token" field (e.g. pad_token) as a secret
        name: _plain(getattr(args, name))
        for name in sorted(declared - set(trainer_fields))
        if getattr(args, name) is not None
    }
    hyperparameters = {}
    for name, value in values.items():
        if name not in trainer_fields or "token" in name or name.startswith(_PRESENTATION_OPTIONS):
            continue
        default = _plain(_field_default(own_fields.get(name, trainer_fields[name])))
        if name in KEY_HYPERPARAMETERS or (value != default and (value or default)):
            hyperparameters[name] = value
    return method, hyperparameters


def _dataset_summary(dataset: Any) -> dict[str, Any] | None:
    """Rows and columns of a training or evaluation dataset (``None`` when there is none)."""
    if dataset is None:
        return None
    columns = [column for column in getattr(dataset, "column_names", None) or [] if not column.startswith("ref_")]
    try:
        rows = len(dataset)
    except TypeError:  # an iterable dataset
        rows = None
    return {"rows": rows, "columns": columns}


def training_stage_record(trainer: Any) -> dict[str, Any]:
    """What the model card says about one training stage, as JSON-ready data (saved with the checkpoint).

    Keys: ``trainer`` (class name), ``method`` (the autoreg-embed trainer it derives from, for the citation),
    ``train_dataset`` / ``eval_dataset`` (``{"rows", "columns"}``; precomputed ``ref_*`` columns left out),
    ``steps``, ``epochs``, ``method_options``, ``hyperparameters`` (training hyper-parameters), and
    ``eval_results`` (the latest ``eval_*`` metrics).
    """
    method = next(
        (cls.__name__ for cls in type(trainer).__mro__ if cls.__name__ in TRAINER_CITATIONS), type(trainer).__name__
    )
    method_options, hyperparameters = _options(trainer.args)
    state = trainer.state
    return {
        "trainer": type(trainer).__name__,
        "method": method,
        "train_dataset": _dataset_summary(trainer.train_dataset),
        "eval_dataset": _dataset_summary(trainer.eval_dataset),
        "steps": state.global_step,
        "epochs": round(float(state.epoch or 0.0), 4),
        "method_options": method_options,
        "hyperparameters": hyperparameters,
        "eval_results": latest_eval_metrics(state.log_history),
    }


def stage_record(stage: str | Mapping[str, Any]) -> dict[str, Any]:
    """A stored stage as a record dict (checkpoints written before version 0.1 store only the trainer name)."""
    return {"trainer": stage, "method": stage} if isinstance(stage, str) else dict(stage)


def _code(value: Any) -> str:
    """A value as JSON inside backticks, safe in a Markdown table cell (escapes, quotes and newlines visible)."""
    return "`" + json.dumps(value, ensure_ascii=False).replace("|", "\\|") + "`"


def _table(header: tuple[str, str], rows: Sequence[tuple[str, str]]) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


def _data_line(name: str, summary: Mapping[str, Any] | None) -> list[str]:
    if not summary:
        return []
    rows = "unknown number of" if summary.get("rows") is None else f"{summary['rows']:,}"
    columns = ", ".join(f"`{column}`" for column in summary.get("columns", []))
    return [f"- **{name}:** {rows} rows" + (f"; columns {columns}" if columns else "")]


def _stage_section(number: int, record: Mapping[str, Any]) -> list[str]:
    trainer = record.get("trainer", "unknown")
    method = record.get("method", trainer)
    title = trainer if trainer == method else f"{trainer} (a {method})"
    lines = [f"### Stage {number}: {title}", ""]
    if method in TRAINER_DESCRIPTIONS:
        lines += [TRAINER_DESCRIPTIONS[method][0].upper() + TRAINER_DESCRIPTIONS[method][1:] + ".", ""]
    details = _data_line("Training dataset", record.get("train_dataset"))
    details += _data_line("Evaluation dataset", record.get("eval_dataset"))
    if record.get("steps") is not None:
        details.append(f"- **Optimisation steps:** {record['steps']} ({record.get('epochs', 0)} epochs)")
    if details:
        lines += [*details, ""]
    if record.get("method_options"):
        lines += ["#### Method options", ""]
        lines += _table(("option", "value"), [(name, _code(v)) for name, v in record["method_options"].items()])
        lines.append("")
    if record.get("hyperparameters"):
        lines += ["#### Training hyper-parameters", ""]
        lines += _table(("option", "value"), [(name, _code(v)) for name, v in record["hyperparameters"].items()])
        lines.append("")
    if record.get("eval_results"):
        lines += ["#### Evaluation during training (last)", ""]
        lines += _table(("metric", "value"), [(name, f"{v:.4g}") for name, v in record["eval_results"].items()])
        lines.append("")
    return lines


def _format_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _flatten(results: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in results.items():
        if isinstance(value, Mapping):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def render_model_card(
    settings: EncoderSettings,
    prompts: Mapping[str, str],
    default_prompt_name: str | None,
    embedding_dimension: int,
    training_stages: Sequence[str | Mapping[str, Any]] = (),
    eval_results: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
) -> str:
    """The Markdown model card, in the layout of sentence-transformers' model cards.

    Args:
        settings: the encoder layout (base model, k, template, pooling, lengths).
        prompts: the saved prompts (instructions), by name.
        default_prompt_name: the prompt plain ``encode`` uses.
        embedding_dimension: size of the sentence embedding.
        training_stages: the stages the weights went through, in order: records from
            :func:`training_stage_record`, or trainer names.
        eval_results: results to show under "Evaluation" (nested mappings are flattened to dotted names), e.g.
            what ``autoreg-embed evaluate`` wrote.
        versions: package name -> version, for "Framework Versions".
    """
    records = [stage_record(stage) for stage in training_stages]
    base = settings.base_model_name_or_path
    front_matter = ["library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    front_matter += [f"- {tag}" for tag in ("sentence-transformers", "feature-extraction", "autoreg-embed")]
    if base and _HUB_ID.match(base):
        front_matter.append(f"base_model: {base}")
    k = settings.num_compress_tokens
    compress = f"{k} ({_code(settings.compress_tokens[0])} … {_code(settings.compress_tokens[-1])})" if k else "0"
    lines = ["---", *front_matter, "---", "", "# autoreg-embed text-embedding model", ""]
    lines += [
        "A decoder LLM turned into a text encoder with [autoreg-embed](https://github.com/autoreg-embed/autoreg-embed)"
        f" (base model {_code(base)}). The embedding is read from the model's last-layer states after "
        "`[BOS] + text + instruction + compress tokens`.",
        "",
        "## Model Details",
        "",
        "### Model Description",
        "",
        "- **Model Type:** Sentence Transformer (one `AutoRegEmbedModule`)",
        f"- **Base model (frozen decoder):** {_code(base)}",
        f"- **Maximum Sequence Length:** {settings.max_text_length} tokens of text (instruction and compress tokens "
        "come on top)",
        f"- **Output Dimensionality:** {embedding_dimension} dimensions",
        "- **Similarity Function:** Cosine Similarity",
        "",
        "### Encoder layout",
        "",
    ]
    lines += _table(
        ("setting", "value"),
        [
            ("compress tokens k", compress),
            ("template", _code(settings.template)),
            ("BOS first", _code(settings.add_bos)),
            ("pooling", _code(settings.pooling)),
            ("L2-normalised", _code(settings.normalize)),
            ("max text tokens (= max_seq_length)", str(settings.max_text_length)),
            ("max instruction tokens", str(settings.max_instruction_length)),
        ],
    )
    lines += ["", "### Prompts", ""]
    if prompts:
        lines += [
            "The sentence-transformers prompt is the *instruction*: it fills `{instruction}` in the template.",
            "",
        ]
        rows = [
            (f"{name}{' (default)' if name == default_prompt_name else ''}", _code(prompt))
            for name, prompt in prompts.items()
        ]
        lines += _table(("name", "instruction"), rows)
    else:
        lines.append("None (the template has no instruction).")
    lines += [
        "",
        "## Usage",
        "",
        "### Direct Usage (Sentence Transformers)",
        "",
        "Needs `pip install autoreg-embed` (the module class comes from the installed package; no code is stored "
        "in this folder).",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder", trust_remote_code=True)',
        '# or, without the flag: import autoreg_embed; model = autoreg_embed.load("path/to/this/folder")',
        'queries = model.encode_query(["What is the capital of France?"])',
        'documents = model.encode_document(["Paris is the capital of France."])',
        "print(model.similarity(queries, documents))",
        "```",
        "",
    ]
    if eval_results:
        lines += ["## Evaluation", "", "### Metrics", ""]
        lines += _table(("metric", "value"), [(name, _format_metric(v)) for name, v in _flatten(eval_results)])
        lines.append("")
    lines += ["## Training Details", ""]
    if records:
        lines += ["Stages, in order:", ""]
        lines += [f"{number}. {record['trainer']}" for number, record in enumerate(records, start=1)]
        lines.append("")
        for number, record in enumerate(records, start=1):
            lines += _stage_section(number, record)
    else:
        lines += ["None: the weights are those of the base model (a training-free baseline).", ""]
    if versions:
        lines += ["### Framework Versions", ""]
        lines += [f"- {name}: {version}" for name, version in versions.items()]
        lines.append("")
    citations = list(dict.fromkeys(c for r in records for c in TRAINER_CITATIONS.get(r.get("method", ""), ())))
    if citations:
        lines += ["## Citation", "", "### BibTeX", ""]
        for citation in citations:
            lines += ["```bibtex", citation, "```", ""]
    return "\n".join(lines)

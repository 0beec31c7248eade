"""The README.md model card written next to every exported or trainer-saved checkpoint."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from autoreg_embed.modeling.settings import EncoderSettings

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TIMING_METRICS = ("_runtime", "_samples_per_second", "_steps_per_second")


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


def _code(value: Any) -> str:
    """A value as JSON inside backticks, safe in a Markdown table cell (escapes, quotes and newlines visible)."""
    return "`" + json.dumps(value, ensure_ascii=False).replace("|", "\\|") + "`"


def render_model_card(
    settings: EncoderSettings,
    prompts: Mapping[str, str],
    default_prompt_name: str | None,
    embedding_dimension: int,
    training_stages: Sequence[str] = (),
    eval_results: Mapping[str, float | int | str] | None = None,
) -> str:
    """Markdown model card: base model, training stages, layout settings, prompts, evaluation results, usage."""
    base = settings.base_model_name_or_path
    front_matter = ["library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    front_matter += [f"- {tag}" for tag in ("sentence-transformers", "feature-extraction", "autoreg-embed")]
    if base and _HUB_ID.match(base):
        front_matter.append(f"base_model: {base}")
    k = settings.num_compress_tokens
    compress = f"{k} ({_code(settings.compress_tokens[0])} … {_code(settings.compress_tokens[-1])})" if k else "0"
    rows = [
        ("base model (frozen decoder)", _code(base)),
        ("compress tokens k", compress),
        ("template", _code(settings.template)),
        ("BOS first", _code(settings.add_bos)),
        ("pooling", _code(settings.pooling)),
        ("L2-normalised", _code(settings.normalize)),
        ("max text tokens (= max_seq_length)", str(settings.max_text_length)),
        ("max instruction tokens", str(settings.max_instruction_length)),
        ("embedding dimension", str(embedding_dimension)),
        ("similarity", "cosine"),
    ]
    lines = ["---", *front_matter, "---", "", "# autoreg-embed text-embedding model", ""]
    lines += [
        "A decoder LLM turned into a text encoder with [autoreg-embed](https://github.com/autoreg-embed/autoreg-embed)",
        "(AutoRegEmbed: information compression, then conditional distribution alignment). The embedding is read",
        "from the model's last-layer states after `[BOS] + text + instruction + compress tokens`.",
        "",
        "## Training stages",
        "",
    ]
    if training_stages:
        lines += [f"{number}. {stage}" for number, stage in enumerate(training_stages, start=1)]
    else:
        lines.append("None: the weights are those of the base model (a training-free baseline).")
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "## Prompts", ""]
    if prompts:
        lines += [
            "The sentence-transformers prompt is the *instruction*: it fills `{instruction}` in the template.",
            "",
            "| name | instruction |",
            "|---|---|",
        ]
        for name, prompt in prompts.items():
            marker = " (default)" if name == default_prompt_name else ""
            lines.append(f"| {name}{marker} | {_code(prompt)} |")
    else:
        lines.append("None (the template has no instruction).")
    if eval_results:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in sorted(eval_results.items())]
    lines += [
        "",
        "## Usage",
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
    return "\n".join(lines)

"""STS-B dev Spearman of untrained encoder layouts: what a trained recipe starts from (step 0).

Each layout adds the compress tokens to the embedded SmolLM2-135M-Instruct without training, exports it as a
sentence-transformers checkpoint and evaluates it. With the ``prompteol`` layout and k = 1 the untrained encoder is
exactly the PromptEOL prompt baseline. Run from the repository root::

    python examples/layouts_at_step0.py --output_dir runs/step0 --sts_pairs 500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from reproduce import layout_options  # the sibling driver script (this folder is on sys.path when run)

from autoreg_embed import CDAConfig, load
from autoreg_embed.evaluation import evaluate_sts
from autoreg_embed.sentence_transformers import export_sentence_transformer, prompts_from_instructions
from autoreg_embed.trainers.base_trainer import prepare_encoder

PAPER_INSTRUCTION_WITHOUT_QUOTE = {f"instruction_{key}": "This sentence means in one word:" for key in ("next", "self")}


def prompteol(num_compress_tokens: int) -> dict[str, Any]:
    """The driver's ``prompteol`` layout (encoder and instruction options) with k compress tokens."""
    encoder, instructions = layout_options("prompteol", num_compress_tokens)
    return {**encoder, **instructions}


LAYOUTS: dict[str, dict[str, Any]] = {
    "paper, vocabulary-mean init, k=5": {"num_compress_tokens": 5},
    "paper, ' “' init, k=5": {"num_compress_tokens": 5, "compress_token_init": " “", **PAPER_INSTRUCTION_WITHOUT_QUOTE},
    "paper, ' “' init, k=5, last compress token": {
        "num_compress_tokens": 5,
        "pooling": "compress_last",
        "compress_token_init": " “",
        **PAPER_INSTRUCTION_WITHOUT_QUOTE,
    },
    "paper, ' “' init, k=1": {"num_compress_tokens": 1, "compress_token_init": " “", **PAPER_INSTRUCTION_WITHOUT_QUOTE},
    "prompteol, ':\"' init, k=5": prompteol(5),
    "prompteol, ':\"' init, k=1": prompteol(1),
}
"""``paper``: ``{text}\\n{instruction}`` with the paper's STS instruction (its closing quote moved into the
compress-token init where one is given). ``prompteol``: ``This sentence : "{text}" means in one word`` + ``:"``."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/step0")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--sts_pairs", type=int, default=500)
    args = parser.parse_args()
    out, results = Path(args.output_dir), {}
    for index, (name, options) in enumerate(LAYOUTS.items()):
        config = CDAConfig(output_dir=str(out / str(index)), report_to="none", **options)
        model, tokenizer, settings = prepare_encoder(None, None, config)
        prompts = prompts_from_instructions(config.instruction_texts())
        export_sentence_transformer(model, tokenizer, settings, out / str(index), prompts=prompts)
        sts = Path(args.data) / "sts" / "stsb_dev.jsonl"
        results[name] = evaluate_sts(load(out / str(index)), sts, limit=args.sts_pairs)["spearman"]
        print(json.dumps({"layout": name, "spearman": round(results[name], 2)}), flush=True)
    (out / "layouts.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Write the autoencoding rows of the readable stage 1 (``examples/configs/smollm2_readable_stage1.yaml``).

Rows are ``context`` = ``target`` = a short SNLI sentence, ``instruction`` = PromptEOL's "means in one word", taken
from the SNLI triplets after the first ``--exclude_triplets`` rows of the seed's shuffle (those are the stage-2 /
InfoNCE triplets of ``examples/reproduce.py``, so stage 1 never sees them)::

    python examples/autoencoding_rows.py --output data/autoencoding.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import SIZES, autoencoding_rows

from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--rows", type=int, default=SIZES["small"].compression_rows)
    parser.add_argument("--exclude_triplets", type=int, default=SIZES["small"].triplets)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = replace(SIZES["small"], compression_rows=args.rows, triplets=args.exclude_triplets)
    rows, _ = autoencoding_rows(Path(args.data), sizes, args.seed, PROMPTEOL_INSTRUCTION)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {output}")


if __name__ == "__main__":
    main()

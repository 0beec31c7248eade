#!/usr/bin/env bash
# Issue 14, item 4: does the claim hold once stage 1 is readable, at the paper's stage-1 size? On one GPU:
# stage 1 on all 4.7k SQuAD/XQuAD/PubMedQA rows for 2 epochs in bf16 (the paper's data size and epochs, lr 1e-4
# for a 135M model), then CDA (both reference signs) and InfoNCE on all 6.3k SNLI triplets, STS-B dev (1500
# pairs), readout-gain curve of stage 1 and readout gain after CDA: once with the frozen decoder reading the states
# inside the ChatML template (docs/compression.md, decoder_template), once as in the paper (no template).
# Expected under 8 minutes on one H100-class GPU for both (not yet measured: no GPU was lent when it was written).
#
#   bash benchmarks/gpu_reproduce.sh MODEL_DIR OUTPUT_DIR [DATA_DIR]
#
# MODEL_DIR: the embedded SmolLM2-135M-Instruct converted here (python -c "import autoreg_embed;
# print(autoreg_embed.default_model_path())") and copied to the machine (the device has no internet).
# Results: OUTPUT_DIR/{chatml,paper}/results.md, results.json, readout_curve.png, learning_curve.png.
set -euo pipefail
model=${1:?MODEL_DIR}
out=${2:?OUTPUT_DIR}
data=${3:-../shared/data}
common=(--size gpu --stage1 qa --compression_epochs 2 --compression_lr 1e-4 --eval_steps 50 --bf16 --seeds 0
        --model "$model" --data "$data")
for variant in chatml:chatml_words paper:none; do
    name=${variant%%:*}
    python examples/reproduce.py "${common[@]}" --decoder_template "${variant#*:}" --output_dir "$out/$name"
    cat "$out/$name/results.md"
done

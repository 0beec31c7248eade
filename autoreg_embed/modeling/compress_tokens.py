"""The k compress tokens: added to the tokenizer, given embedding rows, and the model marked as the original LLM."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autoreg_embed.modeling.original import record_original_weights
from autoreg_embed.modeling.settings import EncoderSettings


def add_compress_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: EncoderSettings, init_from: str = "mean"
) -> list[int]:
    """Add the k compress tokens to ``tokenizer`` and give them embedding rows in ``model``; return their ids.

    New rows start at the mean of the existing vocabulary embeddings (``init_from="mean"``), or at the embedding
    of the last token of the string ``init_from`` (e.g. the instruction's closing quote, so that step 0 sees the
    same input as the prompt baseline). The matrix only grows (models with spare rows keep their size). Calling
    it again with the same settings is a no-op that returns the ids.

    The model as it is now (before any training) is the original LLM, the frozen decoder of both stages: its name
    and a fingerprint of its layer weights are recorded in ``model.config`` (see
    :func:`~autoreg_embed.modeling.original.record_original_weights`), so that a trainer given the model later,
    in memory or from a checkpoint, knows whether its weights are still the original ones.
    """
    tokens = settings.compress_tokens
    if not tokens:  # prompt baselines (k = 0) have nothing to add
        return []
    vocab = tokenizer.get_vocab()
    present = [token for token in tokens if token in vocab]
    if present and len(present) < len(tokens):
        raise ValueError(f"The tokenizer has only some compress tokens ({present}); expected all of {tokens}.")
    embeddings = model.get_input_embeddings()
    if present:
        ids = [vocab[token] for token in tokens]
        if max(ids) >= embeddings.weight.shape[0]:
            raise ValueError("The tokenizer has compress tokens the model has no embedding rows for.")
        return ids
    record_original_weights(model)
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if max(ids) >= embeddings.weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    _initialise_rows(model, tokenizer, ids, init_from)
    return ids


@torch.no_grad()
def _initialise_rows(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[int], init_from: str
) -> None:
    num_original = min(ids)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    if init_from != "mean":
        source_ids = tokenizer(init_from, add_special_tokens=False)["input_ids"]
        if not source_ids:
            raise ValueError(f"compress-token init string {init_from!r} tokenizes to nothing.")
    for matrix in matrices:
        source = matrix[:num_original].float().mean(dim=0) if init_from == "mean" else matrix[source_ids[-1]]
        matrix[ids] = source.to(matrix.dtype).clone().expand(len(ids), -1)  # clone: a row of `matrix` itself

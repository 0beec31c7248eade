"""Evaluation: offline STS and BEIR-folder retrieval through mteb, mteb task names, result files.

The model is a tiny deterministic bag-of-words ``SentenceTransformer`` (no download): each whitespace token of
prompt + text adds one vector, so prompts change embeddings and hand-computed rankings are exact.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from helpers import sts_rows, write_jsonl, write_sts_file
from scipy.stats import pearsonr, spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.input_module import InputModule

from autoreg_embed.evaluation import (
    PAPER_STS,
    LocalSTSTask,
    evaluate_mteb,
    evaluate_retrieval,
    evaluate_sts,
    format_paper_sts,
    format_summary,
    get_mteb_tasks,
    load_beir_folder,
    load_sts_rows,
    paper_sts_average,
    paper_sts_tasks,
    write_results,
)

INV_LOG2_3 = 1 / math.log2(3)  # nDCG gain discount at rank 2


class BagOfWords(InputModule):
    """Sum of one vector per token: one-hot for ``vocab`` words, a fixed random vector (CRC32 seed) otherwise.

    Every call records ``(prompt, texts)`` in ``calls``, to check which prompt encoded which texts.
    """

    def __init__(self, vocab: tuple[str, ...] = (), dim: int = 48) -> None:
        super().__init__()
        self.index = {word: i for i, word in enumerate(vocab)}
        self.dim = dim
        self.calls: list[tuple[str | None, list[str]]] = []

    def _vector(self, word: str) -> torch.Tensor:
        vector = torch.zeros(self.dim)
        if word in self.index:
            vector[self.index[word]] = 1.0
        else:
            generator = torch.Generator().manual_seed(zlib.crc32(word.encode()))
            vector[len(self.index) :] = torch.randn(self.dim - len(self.index), generator=generator)
        return vector

    def _embed(self, text: str) -> torch.Tensor:
        return sum((self._vector(word) for word in text.split()), torch.zeros(self.dim))

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((prompt, list(inputs)))
        return {"bow": torch.stack([self._embed((prompt or "") + text) for text in inputs])}

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        return {**features, "sentence_embedding": features["bow"]}

    def get_embedding_dimension(self) -> int:
        return self.dim

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("test module")


def bow_model(prompts: dict[str, str] | None = None, vocab: tuple[str, ...] = ()) -> SentenceTransformer:
    return SentenceTransformer(modules=[BagOfWords(vocab)], prompts=prompts, device="cpu")


def prompts_used(model: SentenceTransformer) -> dict[str, set[str | None]]:
    """``{text: prompts it was encoded with}`` from the module's call log."""
    used: dict[str, set[str | None]] = {}
    for prompt, texts in model[0].calls:
        for text in texts:
            used.setdefault(text, set()).add(prompt)
    return used


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- STS ---------------------------------------------------------------------------------------------------


def test_sts_equals_spearman_of_cosines_with_document_prompt(tmp_path):
    model = bow_model({"query": "question: ", "document": "passage: "})
    result = evaluate_sts(model, write_sts_file(tmp_path / "sts.jsonl", 30), limit=20)

    rows = sts_rows(20)
    assert {prompt for prompts in prompts_used(model).values() for prompt in prompts} == {"passage: "}
    sims = cosines(
        model.encode_document([row["sentence1"] for row in rows]),
        model.encode_document([row["sentence2"] for row in rows]),
    )
    gold = [row["score"] for row in rows]
    assert result["n"] == 20
    assert math.isfinite(result["spearman"])
    assert result["spearman"] == pytest.approx(100 * spearmanr(sims, gold).statistic, abs=1e-6)
    assert result["pearson"] == pytest.approx(100 * pearsonr(sims, gold).statistic, abs=1e-4)


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ({"query": "q: ", "document": "d: "}, "d: "),
        # the task type outranks "document"
        ({"query": "q: ", "document": "d: ", "STS": "similar: "}, "similar: "),
    ],
)
def test_sts_prompt_picked_by_mteb(prompts, expected):
    model = bow_model(prompts)
    rows = sts_rows(5)
    evaluate_sts(model, rows)
    assert set(prompts_used(model)) == {row["sentence1"] for row in rows} | {row["sentence2"] for row in rows}
    assert all(used == {expected} for used in prompts_used(model).values())


# mteb warns that it ignores prompt names like "paraphrase" (not an mteb task name, type or prompt type).
@pytest.mark.filterwarnings("ignore:Task name paraphrase is not valid", "ignore:Some prompts are not in the")
def test_sts_named_prompt(tmp_path):
    model = bow_model({"query": "q: ", "document": "d: ", "paraphrase": "same meaning: "})
    result = evaluate_sts(model, write_sts_file(tmp_path / "sts.jsonl", 30), prompt_name="paraphrase", limit=20)
    assert all(used == {"same meaning: "} for used in prompts_used(model).values())

    rows = sts_rows(20)
    sims = cosines(
        model.encode([row["sentence1"] for row in rows], prompt_name="paraphrase"),
        model.encode([row["sentence2"] for row in rows], prompt_name="paraphrase"),
    )
    gold = [row["score"] for row in rows]
    assert result["spearman"] == pytest.approx(100 * spearmanr(sims, gold).statistic, abs=1e-6)
    with pytest.raises(ValueError, match="Unknown prompt_name 'nope'"):
        evaluate_sts(model, rows, prompt_name="nope")


def test_sts_bad_input(tmp_path):
    good = {"sentence1": "a", "sentence2": "b", "score": 1.0}
    with pytest.raises(FileNotFoundError, match="STS file not found"):
        evaluate_sts(bow_model(), tmp_path / "missing.jsonl")
    path = write_jsonl(tmp_path / "no_score.jsonl", [good, {"sentence1": "a", "sentence2": "b"}])
    with pytest.raises(ValueError, match=r"no_score.jsonl, line 2: missing column 'score'"):
        load_sts_rows(path)
    path = write_jsonl(tmp_path / "text_score.jsonl", [{**good, "score": "high"}, good])
    with pytest.raises(
        ValueError, match=r"text_score.jsonl, line 1: column 'score' must be a finite number, got 'high'"
    ):
        load_sts_rows(path)
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.jsonl, line 2: invalid JSON"):
        load_sts_rows(tmp_path / "broken.jsonl")
    with pytest.raises(ValueError, match=r"row 3: missing column 'sentence2'"):
        load_sts_rows([good, good, {"sentence1": "a", "score": 2}])
    with pytest.raises(ValueError, match="need at least 2 STS rows, found 1"):
        load_sts_rows([good])
    assert load_sts_rows([{**good, "score": "2.5", "id": 7}, good]) == [{**good, "score": 2.5}, good]


# --- retrieval ---------------------------------------------------------------------------------------------


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    lines = ["query-id\tcorpus-id\tscore", *("\t".join(map(str, qrel)) for qrel in qrels)]
    (folder / "qrels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_retrieval_ndcg_matches_hand_computation(tmp_path):
    corpus = [
        {"_id": "d1", "title": "alpha", "text": "beta"},  # title and text are joined
        {"_id": "d2", "text": "alpha"},
        {"_id": "d3", "title": "", "text": "alpha gamma delta"},
        {"_id": "d4", "title": "", "text": "gamma"},
        {"_id": "d5", "title": "", "text": "delta"},
    ]
    queries = [
        {"_id": "q1", "text": "alpha beta"},
        {"_id": "q2", "text": "delta"},
        {"_id": "q3", "text": "gamma"},  # no judgements: not scored
    ]
    qrels = [("q1", "d2", 1), ("q2", "d3", 2), ("q2", "d5", 1)]
    folder = write_beir(tmp_path / "beir", corpus, queries, qrels)
    result = evaluate_retrieval(bow_model(vocab=("alpha", "beta", "gamma", "delta")), folder)

    # q1: cosines d1 1, d2 0.71, d3 0.41 -> the relevant d2 is at rank 2.
    ndcg_q1 = INV_LOG2_3
    # q2: d5 (gain 1) at rank 1, d3 (gain 2) at rank 2; ideal order d3, d5. pytrec_eval's gain is linear.
    ndcg_q2 = (1 + 2 * INV_LOG2_3) / (2 + 1 * INV_LOG2_3)
    assert result["ndcg@10"] == pytest.approx(100 * (ndcg_q1 + ndcg_q2) / 2, abs=1e-3)  # mteb rounds to 1e-5
    assert result["mrr@10"] == pytest.approx(100 * (1 / 2 + 1) / 2)
    assert result["recall@10"] == pytest.approx(100.0)
    assert (result["n_queries"], result["n_documents"]) == (2, 5)


@pytest.mark.parametrize(
    ("prompts", "expected_ndcg"),
    [
        # cosines: q1 "cat pet" vs d1 "dog cat" 0.5, d2 "dog dog" 0 -> d1 first
        ({"query": "cat ", "document": "dog "}, 1.0),
        # swapped: q1 "dog pet" vs d1 "cat cat" 0, d2 "cat dog" 0.5 -> d1 second
        ({"query": "dog ", "document": "cat "}, INV_LOG2_3),
    ],
)
def test_retrieval_encodes_queries_and_documents_with_their_prompts(tmp_path, prompts, expected_ndcg):
    folder = write_beir(
        tmp_path / "beir",
        corpus=[{"_id": "d1", "title": "", "text": "cat"}, {"_id": "d2", "title": "", "text": "dog"}],
        queries=[{"_id": "q1", "text": "pet"}],
        qrels=[("q1", "d1", 1)],
    )
    model = bow_model(prompts, vocab=("cat", "dog", "pet"))
    result = evaluate_retrieval(model, folder)
    query_prompt, document_prompt = prompts["query"], prompts["document"]
    assert prompts_used(model) == {"pet": {query_prompt}, "cat": {document_prompt}, "dog": {document_prompt}}
    assert result["ndcg@10"] == pytest.approx(100 * expected_ndcg, abs=1e-3)


def test_retrieval_bad_input(tmp_path):
    corpus = [{"_id": "d1", "title": "", "text": "x"}, {"_id": 2, "text": "y"}]  # integer ids become strings
    queries = [{"_id": "q1", "text": "x"}]
    with pytest.raises(FileNotFoundError, match="BEIR folder not found"):
        load_beir_folder(tmp_path / "missing")
    split = load_beir_folder(write_beir(tmp_path / "ok", corpus, queries, [("q1", "2", 1)]))
    assert split["relevant_docs"] == {"q1": {"2": 1}}

    folder = write_beir(tmp_path / "unknown_doc", corpus, queries, [("q1", "d1", 1), ("q1", "d9", 1)])
    with pytest.raises(ValueError, match=r"qrels.tsv, line 3: corpus-id 'd9' is not in corpus.jsonl"):
        evaluate_retrieval(bow_model(), folder)
    folder = write_beir(tmp_path / "unknown_query", corpus, queries, [("q7", "d1", 1)])
    with pytest.raises(ValueError, match=r"qrels.tsv, line 2: query-id 'q7' is not in queries.jsonl"):
        load_beir_folder(folder)
    folder = write_beir(tmp_path / "float_score", corpus, queries, [("q1", "d1", 0.5)])
    with pytest.raises(ValueError, match=r"qrels.tsv, line 2: score '0.5' is not an integer"):
        load_beir_folder(folder)
    folder = write_beir(tmp_path / "no_text", [*corpus, {"_id": "d3", "body": "z"}], queries, [])
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 3: missing column 'text'"):
        load_beir_folder(folder)
    folder = write_beir(tmp_path / "duplicate", [*corpus, {"_id": "d1", "text": "z"}], queries, [])
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 3: duplicate _id 'd1'"):
        load_beir_folder(folder)
    folder = write_beir(tmp_path / "header", corpus, queries, [("q1", "d1", 1)])
    (folder / "qrels.tsv").write_text("qid docid rel\nq1\td1\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qrels.tsv, line 1: expected the header"):
        load_beir_folder(folder)
    (folder / "qrels.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="qrels not found"):
        load_beir_folder(folder)
    (folder / "queries.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="queries not found"):
        load_beir_folder(folder)


# --- mteb task names ---------------------------------------------------------------------------------------


def test_mteb_task_names_resolve_offline_and_unknown_names_suggest_a_match():
    tasks = get_mteb_tasks(["STSBenchmark", "SICK-R", "SciFact"])
    assert [task.metadata.name for task in tasks] == ["STSBenchmark", "SICK-R", "SciFact"]
    with pytest.raises(ValueError, match=r"'STSBenchmrk' not found\. Did you mean: 'STSBenchmark'"):
        evaluate_mteb(bow_model(), ["SciFact", "STSBenchmrk"])


def test_evaluate_mteb_runs_task_objects_and_writes_mteb_results(tmp_path):
    model = bow_model({"query": "q: ", "document": "d: "})
    rows = load_sts_rows(write_sts_file(tmp_path / "sts.jsonl", 30), limit=20)
    scores = evaluate_mteb(model, [LocalSTSTask(rows)], output_folder=tmp_path / "mteb")
    assert scores == {"LocalSTS": pytest.approx(evaluate_sts(model, rows)["spearman"])}
    assert len(list((tmp_path / "mteb").rglob("LocalSTS.json"))) == 1


# --- the paper's STS task set -----------------------------------------------------------------------------

PAPER_TASKS = ["BIOSSES", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STS22", "STSBenchmark"]


def test_paper_sts_is_the_papers_ten_tasks_english_test_split_only():
    tasks = paper_sts_tasks()
    assert [task.metadata.name for task in tasks] == PAPER_TASKS
    assert all(task.eval_splits == ["test"] and task.metadata.main_score == "cosine_spearman" for task in tasks)
    subsets = {task.metadata.name: task.hf_subsets for task in tasks}
    assert subsets["STS17"] == ["en-en"] and subsets["STS22"] == ["en"]
    assert all(subsets[name] == ["default"] for name in PAPER_TASKS if name not in ("STS17", "STS22"))
    assert [task.metadata.name for task in get_mteb_tasks([PAPER_STS, "SciFact"])] == [*PAPER_TASKS, "SciFact"]


def test_paper_sts17_runs_only_its_english_pairs():
    """With every STS17 subset's data in memory, only en-en is embedded and scored (no download)."""
    task = next(task for task in paper_sts_tasks() if task.metadata.name == "STS17")

    def rows(tag: str) -> Dataset:
        pairs = [("a cat sits", "a cat sat", 4.0), ("a dog runs", "the dog ran", 3.0), ("the sun", "moon rises", 0.5)]
        return Dataset.from_dict(
            {
                "sentence1": [f"{tag} {a}" for a, _, _ in pairs],
                "sentence2": [f"{tag} {b}" for _, b, _ in pairs],
                "score": [score for _, _, score in pairs],
            }
        )

    task.dataset = {subset: DatasetDict({"test": rows(subset)}) for subset in task.metadata.eval_langs}
    task.data_loaded = True
    assert len(task.dataset) > 5  # Arabic, Korean, Spanish, cross-lingual pairs ...
    model = bow_model()
    assert set(evaluate_mteb(model, [task])) == {"STS17"}
    assert {text.split()[0] for text in prompts_used(model)} == {"en-en"}


def test_paper_sts_average_and_comparison_with_the_paper():
    scores = {name: 70.0 + index for index, name in enumerate(PAPER_TASKS)}
    assert paper_sts_average(scores) == pytest.approx(74.5)
    table = format_paper_sts(scores)
    assert "STS17" in table and "average        74.50   this model" in table
    assert "83.24   paper: AutoRegEmbed-LLaMA2-7B, MEDI-NLI 50k" in table
    with pytest.raises(ValueError, match=r"needs all 10 tasks; missing: \['STS22'\]"):
        paper_sts_average({name: 1.0 for name in PAPER_TASKS if name != "STS22"})


# --- result files ------------------------------------------------------------------------------------------


def test_write_results_is_atomic_json_next_to_model(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = write_results({"spearman": 81.5, "pearson": math.nan, "n": 3}, model_dir, "stsb_dev")
    assert path == model_dir / "eval" / "stsb_dev.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["name"] == "stsb_dev"
    assert saved["results"] == {"spearman": 81.5, "pearson": None, "n": 3}
    assert set(saved["versions"]) == {"mteb", "sentence_transformers"}

    write_results({"spearman": 90.0}, model_dir, "stsb_dev")
    assert json.loads(path.read_text(encoding="utf-8"))["results"] == {"spearman": 90.0}
    assert [p.name for p in path.parent.iterdir()] == ["stsb_dev.json"]  # no temporary file left

    with pytest.raises(ValueError, match="Invalid results name"):
        write_results({}, model_dir, "../escape")
    with pytest.raises(FileNotFoundError, match="Model folder not found"):
        write_results({}, tmp_path / "nowhere", "x")


def test_format_summary():
    flat = {"spearman": 81.234, "pearson": 80.0, "n": 1500}
    assert format_summary(flat) == "spearman=81.23 pearson=80.00 n=1500"
    nested = {"stsb_dev": {"spearman": 70.0}, "SciFact": 65.4321}
    assert format_summary(nested) == "stsb_dev.spearman=70.00 SciFact=65.43"

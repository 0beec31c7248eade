"""The ``evaluate`` subcommand: STS / retrieval / mteb scores of a checkpoint or of an untrained baseline.

Data and task names are checked before the model loads; encoding shows a progress bar. Results are written to
``<folder>/eval/<name>.json`` only inside the folder the user names (the checkpoint, or ``--output_dir``), and a
checkpoint's model card is refreshed with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoreg_embed.cli.checks import check_model_source, check_output_dir, require_readable_file
from autoreg_embed.cli.errors import UserError

RESULTS_NAME = "results"
"""Stem of the results file of a checkpoint (``<checkpoint>/eval/results.json``)."""

SUMMARY = "STS / retrieval / mteb scores of a checkpoint, or of any causal LM untrained (--baseline)"


def run_evaluate(argv: Sequence[str]) -> None:
    """Evaluate a model on offline STS / retrieval data and/or mteb tasks; print a summary and write JSON."""
    from autoreg_embed.cli.arguments import EvaluateArguments, parse_stage_arguments

    usage = "%(prog)s CHECKPOINT (--sts FILE | --retrieval FOLDER | --mteb TASKS) [--OPTION VALUE ...]"
    (args,) = parse_stage_arguments(
        (EvaluateArguments,), argv, "autoreg-embed evaluate", usage=usage, positional="model_name_or_path"
    )
    if not (args.sts or args.retrieval or args.mteb):
        raise UserError("Give at least one of --sts FILE, --retrieval FOLDER, --mteb TASKS.")
    check_model_source(args.model_name_or_path, checkpoint=not args.baseline)
    if args.output_dir:
        check_output_dir(args.output_dir)
    if args.retrieval and not Path(args.retrieval).is_dir():
        raise UserError(f"Retrieval folder {args.retrieval!r} does not exist.")

    from autoreg_embed.evaluation import (
        PAPER_STS,
        evaluate_mteb,
        evaluate_retrieval,
        evaluate_sts,
        format_paper_sts,
        format_summary,
        get_mteb_tasks,
        load_beir_folder,
        load_sts_rows,
        paper_sts_average,
        read_results,
        write_results,
    )

    sts_rows = load_sts_rows(require_readable_file(args.sts, "STS file"), limit=args.sts_limit) if args.sts else None
    if args.retrieval:
        load_beir_folder(args.retrieval)  # checks every file and id before the model loads
    task_names = [name.strip() for name in args.mteb.split(",") if name.strip()] if args.mteb else []
    tasks = get_mteb_tasks(task_names) if task_names else None

    model = _load_model(args)
    results: dict[str, Any] = {}
    progress = {"batch_size": args.batch_size, "show_progress_bar": True}
    if sts_rows is not None:
        results["sts"] = evaluate_sts(model, sts_rows, **progress)
    if args.retrieval:
        results["retrieval"] = evaluate_retrieval(model, args.retrieval, **progress)
    if tasks:
        results["mteb"] = evaluate_mteb(model, tasks, **progress)
        if PAPER_STS in task_names:
            results[PAPER_STS] = {"average": paper_sts_average(results["mteb"])}

    output = args.output_dir or (None if args.baseline else args.model_name_or_path)
    where = "not written; give --output_dir to keep them"
    if output is not None:
        Path(output).mkdir(parents=True, exist_ok=True)
        name = f"baseline-{args.baseline}" if args.baseline else RESULTS_NAME
        where = f"written to {write_results(results, output, name)}"
        if not args.baseline and Path(output).resolve() == Path(args.model_name_or_path).resolve():
            from autoreg_embed.sentence_transformers import refresh_model_card

            stored = read_results(output)
            refresh_model_card(output, {**stored.pop(RESULTS_NAME, {}), **stored})
    print(f"{args.model_name_or_path}: {format_summary(results)} ({where})")
    if PAPER_STS in task_names:
        print(format_paper_sts(results["mteb"]))


def _load_model(args: Any) -> Any:
    from autoreg_embed.sentence_transformers import baseline, load

    if args.baseline:
        return baseline(args.model_name_or_path, args.baseline, args.template)
    return load(args.model_name_or_path)

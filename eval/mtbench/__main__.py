"""CLI: python -m eval.mtbench {answer,judge,validate-judge,show}. Results go to <run_dir>/eval/mtbench (or
--out-dir), holding

    model_answer/<model_id>.jsonl          FastChat answer records (+ <model_id>.info.json: settings and timing)
    model_judgment/<judge>_single.jsonl    FastChat single-grading judgment records
    scores_<judge>.json                    per-model turn-1 / turn-2 / overall / per-category means

Examples:
    python -m eval.mtbench answer --model runs/my_badam_run      # -> runs/my_badam_run/eval/mtbench
    python -m eval.mtbench answer --model smollm2-135m-instruct --out-dir results/mtbench_smollm2
    OPENAI_API_KEY=... python -m eval.mtbench judge --out-dir results/mtbench_smollm2 --judge-model gpt-4
    python -m eval.mtbench show --judgment results/mtbench_smollm2/model_judgment/gpt-4_single.jsonl
    python -m eval.mtbench validate-judge --local-judge qwen2.5-coder-1.5b-instruct --device cuda \
        --out results/mtbench_judge_validation/qwen2.5-coder-1.5b-instruct   # + judge_validation.{json,md}
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from pathlib import Path

from eval.mtbench.data import (MTBenchError, answer_file_path, answer_output_dir, judgment_file_path, load_answers,
                               load_judge_prompts, load_questions, model_name_of_answer_file, output_dir,
                               scores_file_path, write_json_atomic)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def _add_questions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question-file", help="default: <shared>/data/mt_bench/question.jsonl")
    parser.add_argument("--begin", type=int, help="first question index (FastChat's --question-begin)")
    parser.add_argument("--end", type=int, help="question index to stop before (FastChat's --question-end)")
    parser.add_argument("--question-ids", type=int, nargs="+", help="only these question ids (e.g. 81 91 101)")


def _questions(args) -> list[dict]:
    questions = load_questions(args.question_file, begin=args.begin, end=args.end)
    if args.question_ids:
        known = {q["question_id"] for q in questions}
        unknown = sorted(set(args.question_ids) - known)
        if unknown:
            raise MTBenchError(f"question ids {unknown} are not among the selected questions "
                               f"(ids {min(known)}..{max(known)})" if known else "no questions selected")
        questions = [q for q in questions if q["question_id"] in set(args.question_ids)]
    return questions


def _add_judge_options(parser: argparse.ArgumentParser) -> None:
    """The judge's options, shared by `judge` and `validate-judge` (one code path judges both)."""
    parser.add_argument("--judge-model", help="model name at the endpoint, recorded in the judgments (default "
                                              "gpt-4); with --local-judge only the recorded name")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="OpenAI-compatible endpoint root")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the API key ('' sends none)")
    parser.add_argument("--local-judge", help="judge with this local HF model (load_model source) instead of HTTP")
    parser.add_argument("--parallel", type=int, default=1, help="concurrent HTTP requests")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    parser.add_argument("--max-retries", type=int, default=6)
    parser.add_argument("--retry-backoff", type=float, default=2.0,
                        help="seconds before the first retry, doubled each time (a Retry-After header wins)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="judge reply length (FastChat: 2048)")
    parser.add_argument("--batch-size", type=int, default=4, help="local judge batch size")
    parser.add_argument("--device", default="cpu", help="device of a local judge")
    parser.add_argument("--turns", type=int, nargs="+", choices=[1, 2], default=[1, 2])
    parser.add_argument("--judge-prompts", help="default: <shared>/data/mt_bench/judge_prompts.jsonl")
    parser.add_argument("--reference-file", help="default: <shared>/data/mt_bench/reference_answer/gpt-4.jsonl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.mtbench", description="MT-bench: answer, judge, show.")
    commands = parser.add_subparsers(dest="command", required=True)

    answer = commands.add_parser("answer", help="generate a model's answers to the two-turn questions")
    answer.add_argument("--model", required=True, help="a training run directory (its saved model) or any "
                                                       "experiments.models.load_model source or alias")
    answer.add_argument("--out-dir", help="default: <run dir>/eval/mtbench, or runs/eval/<model>/mtbench")
    _add_questions(answer)
    answer.add_argument("--model-id", help="name in the answer records and file (default: from --model)")
    answer.add_argument("--max-new-tokens", type=int, default=1024, help="per turn (FastChat default 1024)")
    answer.add_argument("--temperature", choices=["fastchat", "greedy"], default="fastchat",
                        help="fastchat: per-category table (writing/roleplay 0.7, stem/humanities 0.1, else 0)")
    answer.add_argument("--sampling", choices=["pure", "fastchat"], default="pure",
                        help="pure: temperature only (default); fastchat: also the model's own top_k / top_p, as "
                             "FastChat's gen_model_answer (eval/mtbench/generation.py)")
    answer.add_argument("--batch-size", type=int, default=8)
    answer.add_argument("--num-choices", type=int, default=1)
    answer.add_argument("--seed", type=int, default=0)
    answer.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: fp32 on CPU, bf16 otherwise")
    answer.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")

    judge = commands.add_parser("judge", help="grade answers with a judge model (single-answer grading)")
    where = judge.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", nargs="+", help="training run directories; works in <run-dir>/eval/mtbench of "
                                                   "each (the judge is loaded once for all)")
    where.add_argument("--out-dir", help="the folder holding model_answer/ (as written by `answer`)")
    _add_questions(judge)
    judge.add_argument("--answers", nargs="+", help="answer files model_answer/<model>.jsonl "
                                                     "(default: every *.jsonl in <out>/model_answer)")
    _add_judge_options(judge)

    validate = commands.add_parser(
        "validate-judge", help="how far a judge agrees with GPT-4: it judges the official answers of the reference "
                               "models (gpt-4, gpt-3.5-turbo, vicuna-7b-v1.3, alpaca-13b, llama-13b) as `judge` "
                               "does; their scores beside the published GPT-4-judged ones, rank correlations, "
                               "verdict (<out>/judge_validation.json and .md)")
    validate.add_argument("--out", required=True, help="folder for the judgments and the validation, e.g. "
                                                       "results/mtbench_judge_validation/<judge>")
    validate.add_argument("--answers-dir", help="folder holding <model>.jsonl of each reference model (default: "
                                                "<shared>/data/mt_bench/model_answer)")
    validate.add_argument("--reference-scores", help="published scores with their sources (default: "
                                                     "eval/mtbench/reference_scores.json)")
    _add_questions(validate)
    _add_judge_options(validate)

    show = commands.add_parser("show", help="per-model averages of a judgment file (FastChat's show_result)")
    show.add_argument("--judgment", required=True, help="a model_judgment/<judge>_single.jsonl file")
    show.add_argument("--question-file", help="for per-category means (default: the shared question file)")
    show.add_argument("--judge-model", help="only this judge's judgments")
    show.add_argument("--model-list", nargs="+", help="only these models")
    show.add_argument("--output", help="also write the averages to this JSON file")
    return parser


def _default_model_id(source: str) -> str:
    # A path (run directory, model folder, .gguf) names the model after its last component; an alias or a hub id
    # is kept as written ('org/name' becomes the file name 'org_name').
    path = Path(source.split(":", 1)[-1])
    if path.suffix in {".gguf", ".bin"}:
        return path.stem
    return path.resolve().name if path.exists() else source


def run_answer(args) -> dict:
    from eval.mtbench.answer import generate_answers, load_model_for_answers

    out = answer_output_dir(args.model, args.out_dir)
    questions = _questions(args)
    model_id = args.model_id or _default_model_id(args.model)
    model, tokenizer = load_model_for_answers(args.model, dtype=args.dtype, device=args.device)
    info = generate_answers(model, tokenizer, questions, answer_file_path(out, model_id), model_id=model_id,
                            max_new_tokens=args.max_new_tokens, temperature_mode=args.temperature,
                            batch_size=args.batch_size, num_choices=args.num_choices, seed=args.seed,
                            sampling=args.sampling)
    print(f"answers: {info['answer_file']} ({info['questions_generated']} generated, "
          f"{info['questions_skipped_done']} already done, {info['wall_s']:.1f} s)")
    return info


def _judge_backend(args):
    from eval.mtbench.judge import DeferredJudge, HTTPJudge, LocalHFJudge

    if args.local_judge:
        from eval.mtbench.answer import load_model_for_answers

        name = args.judge_model or args.local_judge

        def load():
            model, tokenizer = load_model_for_answers(args.local_judge, device=args.device)
            return LocalHFJudge(model, tokenizer, name=name, max_new_tokens=args.max_tokens,
                                batch_size=args.batch_size)
        return DeferredJudge(name, args.batch_size, load)   # loaded when there is something to judge
    from eval.mtbench.chat_api import OpenAIChatClient

    client = OpenAIChatClient(args.base_url, args.judge_model or "gpt-4", api_key_env=args.api_key_env or None,
                              max_tokens=args.max_tokens, timeout_s=args.timeout, max_retries=args.max_retries,
                              backoff_s=args.retry_backoff)
    return HTTPJudge(client, parallel=args.parallel)


def run_judge(args) -> dict:
    """Judge the answers of each --run-dir (or of --out-dir) with one judge; returns the result of the last."""
    outs = [output_dir(d, None) for d in args.run_dir] if args.run_dir else [output_dir(None, args.out_dir)]
    if args.answers and len(outs) > 1:
        raise MTBenchError("--answers names the files of one output folder: give one --run-dir with it")
    questions = _questions(args)
    jobs = []
    for out in outs:  # every folder checked before the judge is loaded
        answer_files = args.answers or sorted(glob.glob(str(out / "model_answer" / "*.jsonl")))
        if not answer_files:
            raise MTBenchError(f"no answer files in {out / 'model_answer'}; run `python -m eval.mtbench answer` "
                               "first or pass --answers")
        jobs.append((out, {model_name_of_answer_file(f): load_answers(f) for f in answer_files}))
    backend = _judge_backend(args)
    return [_judge_folder(args, out, model_answers, questions, backend) for out, model_answers in jobs][-1]


def _judge_folder(args, out: Path, model_answers: dict, questions: list[dict], backend) -> dict:
    from eval.mtbench.aggregate import format_summary, summarize_single
    from eval.mtbench.data import default_reference_file
    from eval.mtbench.judge import judge_answers

    prompts = load_judge_prompts(args.judge_prompts)
    references = load_answers(args.reference_file or default_reference_file(), "reference answer file")
    judgment_file = judgment_file_path(out, backend.name)
    stats = judge_answers(model_answers, questions, backend, judgment_file, judge_prompts=prompts,
                          reference_answers=references, turns=tuple(args.turns))
    summary = summarize_single(judgment_file, load_questions(args.question_file), judge_model=backend.name)
    scores_file = scores_file_path(out, backend.name)
    # Relative to the scores file, so that a run directory judged on another machine (a lent GPU) and then copied
    # into results/ names its own judgments rather than a path of that machine.
    relative = os.path.relpath(judgment_file, scores_file.parent)
    result = {**summary, "judgment_file": relative, "run": {**stats, "judgment_file": relative}}
    write_json_atomic(scores_file, result)
    print(f"\n{out}:\n{format_summary(summary)}")
    print(f"\nscores: {scores_file_path(out, backend.name)}")
    return result


def run_validate_judge(args) -> dict:
    """Judge the reference models' official answers as `judge` judges a run (same functions, same files in --out),
    then compare with their published GPT-4-judged scores (eval/mtbench/validation.py). Resumable: judged items are
    skipped, and the judge is loaded only when something is left to judge."""
    from eval.mtbench.aggregate import summarize_single
    from eval.mtbench.data import default_data_dir
    from eval.mtbench.validation import (build_validation, check_folder_is_for, load_reference_scores,
                                         selected_judgments, write_validation)

    reference = load_reference_scores(args.reference_scores)
    answers_dir = Path(args.answers_dir) if args.answers_dir else default_data_dir() / "model_answer"
    answer_files = {model: answers_dir / f"{model}.jsonl" for model in reference["models"]}
    model_answers = {model: load_answers(path, f"answer file of reference model {model!r}")
                     for model, path in answer_files.items()}   # every file checked before the judge loads
    questions = _questions(args)
    backend = _judge_backend(args)
    check_folder_is_for(Path(args.out), backend.name)           # before the judge loads
    _judge_folder(args, Path(args.out), model_answers, questions, backend)
    # the judgment file keeps what earlier calls judged (other --question-ids): compare on this selection only
    chosen = selected_judgments(judgment_file_path(Path(args.out), backend.name), questions, tuple(args.turns))
    scores = summarize_single(chosen, load_questions(args.question_file), judge_model=backend.name)
    settings = {"max_tokens": args.max_tokens, "turns": list(args.turns)}
    if args.local_judge:
        settings.update(local_judge=args.local_judge, batch_size=args.batch_size, device=args.device,
                        decoding="greedy")
    else:
        settings.update(base_url=args.base_url, model=args.judge_model or "gpt-4")
    doc = build_validation(scores, reference, answer_files=answer_files, questions=len(questions),
                           turns=tuple(args.turns), settings=settings)
    json_path, md_path = write_validation(args.out, doc)
    print(f"\n{doc['judge']} {doc['verdict']}\nvalidation: {json_path} and {md_path}")
    return doc


def run_show(args) -> dict:
    from eval.mtbench.aggregate import format_summary, summarize_single

    given = Path(args.judgment)
    plain = given.with_suffix("") if given.suffix == ".gz" else given
    packed = plain.with_name(plain.name + ".gz")
    judgment = plain if plain.is_file() else packed   # a committed <name>.jsonl.gz: the reader decompresses it
    if not judgment.is_file():
        raise MTBenchError(f"judgment file not found: {plain}, nor packed as {packed.name}")
    summary = summarize_single(judgment, load_questions(args.question_file), judge_model=args.judge_model,
                               models=args.model_list)
    print(f"Input file: {args.judgment}")
    print(format_summary(summary))
    if args.output:
        write_json_atomic(Path(args.output), {**summary, "judgment_file": str(args.judgment)})
    return summary


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 a usage or input problem (missing file, bad option, bad key variable); 1 the work failed
    (the judge endpoint failed for good, or anything unexpected). Every failure is one line on stderr, passed through
    chat_api.redact so that no API key or Authorization value reaches the terminal or a log."""
    from eval.mtbench.chat_api import JudgeEndpointError, redact

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        {"answer": run_answer, "judge": run_judge, "validate-judge": run_validate_judge,
         "show": run_show}[args.command](args)
    except JudgeEndpointError as err:
        print(f"error: {_one_line(redact(err))}", file=sys.stderr)
        return 1
    except MTBenchError as err:
        print(f"error: {_one_line(redact(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # never a traceback: it could quote a request header
        print(f"error: {type(err).__name__}: {_one_line(redact(err))}", file=sys.stderr)
        return 1
    return 0


def _one_line(text: str) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return (lines[0] + (" (...)" if len(lines) > 1 else "")) if lines else ""


if __name__ == "__main__":
    sys.exit(main())

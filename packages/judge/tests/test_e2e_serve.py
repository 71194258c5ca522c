"""End to end with `huarizo serve`: tiny models answer Vicuna-80 questions and a scripted judge grades them; a tiny
model served as the judge gives every question a probability verdict (chat and completion mode); the embedded base
model judges in completion mode with a Huarizo template, as the quickstart does (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats import Question, load_questions
from huarizo.formats.testing import ScriptedServer, huarizo_serve, prefer_longer
from huarizo.judge import AnswerConfig, GradeConfig, answer, grade
from huarizo.judge.prompts import PAIR_PREFIX, completion_prompt, pair_messages, verdict_only

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("huarizo.serve") is None,
    reason="huarizo-serve is not installed (needed for `huarizo serve`)",
)


def served(model: Path, name: str, log: Path) -> Any:
    """`huarizo serve` with the alpaca template in a subprocess; yields its OpenAI base URL once it answers."""
    return huarizo_serve(model, log, name=name, args=["--template", "alpaca"])


def test_two_served_tiny_models_answer_and_are_judged(tmp_path, vicuna, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from huarizo.formats.models import build_tiny_model

    other = build_tiny_model(tmp_path / "tiny-b", seed=1)
    files = {}
    for name, folder in (("tiny-a", tiny_model_dir), ("tiny-b", other)):
        with served(folder, name, tmp_path / f"{name}.log") as url:
            files[name] = tmp_path / f"{name}.jsonl"
            cfg = AnswerConfig(
                endpoint={"model": f"openai/{name}", "api_base": url, "cache_dir": str(tmp_path / "cache")},
                questions=str(vicuna["questions"]),
                out=str(files[name]),
                limit=4,
                max_tokens=12,
            )
            assert answer(cfg, progress=False).counts["asked"] == 4
    texts = {
        n: {(d := json.loads(line))["question_id"]: d["choices"][0]["turns"][0] for line in f.open()}
        for n, f in files.items()
    }
    assert all(len(t) == 4 for t in texts.values())
    with ScriptedServer(prefer_longer) as judge:
        s = grade(
            GradeConfig(
                questions=str(vicuna["questions"]),
                answers=[str(files["tiny-a"])],
                baseline=str(files["tiny-b"]),
                judge={"model": "openai/judge", "api_base": judge.url, "cache_dir": str(tmp_path / "cache")},
                verdict="text",
                out=str(tmp_path / "out"),
                bootstrap=100,
            ),
            progress=False,
        ).summary
    a, b = texts["tiny-a"], texts["tiny-b"]
    wins = sum(len(a[q]) > len(b[q]) for q in a)
    losses = sum(len(a[q]) < len(b[q]) for q in a)
    assert (s["n"], s["wins"], s["losses"], s["ties"]) == (4, wins, losses, 4 - wins - losses)
    assert (tmp_path / "out" / "report.md").exists()


@pytest.mark.slow
def test_embedded_model_answers_mt_bench_turn_by_turn(tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    """The embedded Gemma 3 270M behind `huarizo serve` answers two MT-bench questions (two turns each); graded."""
    from huarizo.formats.models import resolve_model
    from huarizo.formats.testing import shown_answer

    qs = shared_data / "fastchat/mt_bench/question.jsonl"
    out = tmp_path / "embedded.jsonl"
    with served(Path(resolve_model("embedded")), "gemma", tmp_path / "serve.log") as url:
        cfg = AnswerConfig(
            endpoint={"model": "openai/gemma", "api_base": url, "cache_dir": str(tmp_path / "cache")},
            questions=str(qs),
            out=str(out),
            limit=2,
            max_tokens=24,
        )
        assert answer(cfg, progress=False).counts["asked"] == 4
    rows = [json.loads(line) for line in out.open()]
    assert len(rows) == 2 and all(len(r["choices"][0]["turns"]) == 2 for r in rows)
    with ScriptedServer(lambda req: f"Rating: [[{1 + len(shown_answer(req)) % 10}]]") as judge:
        s = grade(
            GradeConfig(
                mode="single",
                questions=str(qs),
                answers=[str(out)],
                judge={"model": "openai/judge", "api_base": judge.url, "cache_dir": str(tmp_path / "cache")},
                verdict="text",
                out=str(tmp_path / "grade"),
            ),
            progress=False,
        ).summary
    assert s["models"]["gemma"]["n"] == 4 and set(s["models"]["gemma"]["by_turn"]) == {"1", "2"}


def _short_answers(tmp: Path, vicuna: dict[str, Any], name: str, n: int) -> Path:
    """The first n Vicuna-80 answers of a model, cut short (the tiny judge reads at most 1024 tokens)."""
    rows = [json.loads(line) for line in vicuna["answer"](name).open()][:n]
    path = tmp / f"{name}.jsonl"
    path.write_text("".join(json.dumps({**r, "text": r["text"][:120]}) + "\n" for r in rows))
    return path


def _teach_verdicts(src: Path, dst: Path, questions: list[Question], answers: list[tuple[str, str]]) -> Path:
    """The tiny random model, taught in a few steps to answer A or B where a verdict is due (after the completion
    prompt's `Verdict: [[` and at the start of a chat reply), so that the labels are among its top 20 alternatives
    as they are for any real judge. Plain torch: a test fixture, not a recipe."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from huarizo.formats.templates import get_template

    tok, model = AutoTokenizer.from_pretrained(src), AutoModelForCausalLM.from_pretrained(src)
    template = get_template("alpaca")
    examples = []
    for k, (q, (a, b)) in enumerate(zip(questions, answers, strict=True)):
        for first, second in ((a, b), (b, a)):
            messages = verdict_only(pair_messages(q, [first], [second], 0)[0])
            for prompt in (completion_prompt(messages, template, PAIR_PREFIX), completion_prompt(messages, template)):
                ids = tok(prompt).input_ids
                target = tok("A" if (k + len(first)) % 2 else "B", add_special_tokens=False).input_ids[0]
                examples.append((torch.tensor([ids]), torch.tensor([target])))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(30):
        for ids, target in examples:
            loss = torch.nn.functional.cross_entropy(model(ids).logits[:, -1], target)
            loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def test_a_tiny_model_served_as_judge_gives_every_question_a_probability_verdict(  # type: ignore[no-untyped-def]
    tmp_path, vicuna, tiny_model_dir
) -> None:
    n = 4
    files = {m: _short_answers(tmp_path, vicuna, m, n) for m in ("bard", "gpt35")}
    qs = load_questions(vicuna["questions"]).questions[:n]
    pairs = [(r["text"], s["text"]) for r, s in zip(*(map(json.loads, f.open()) for f in files.values()), strict=True)]
    judge = _teach_verdicts(tiny_model_dir, tmp_path / "judge", qs, pairs)
    with served(judge, "tiny-judge", tmp_path / "judge.log") as url:
        runs = {}
        for mode, extra in (("completion", {"template": "alpaca", "verdict": "logprobs"}), ("chat", {})):
            runs[mode] = grade(
                GradeConfig(
                    questions=str(vicuna["questions"]),
                    answers=[str(files["bard"])],
                    baseline=str(files["gpt35"]),
                    judge={"model": "openai/tiny-judge", "api_base": url, "cache_dir": str(tmp_path / "cache")},
                    out=str(tmp_path / mode),
                    limit=n,
                    bootstrap=100,
                    **extra,
                ),
                progress=False,
            ).summary
    for mode, s in runs.items():
        assert (s["n"], s["errors"], s["verdicts_read"]) == (n, 0, {"logprobs": 2 * n}), mode
        js = [json.loads(line) for line in (tmp_path / mode / "judgments.jsonl").open()]
        for j in js:
            assert j["read"] == ["logprobs", "logprobs"] and 0 <= j["preference"] <= 1, mode
            assert all(abs(sum(p.values()) - 1) < 1e-6 and p["A"] + p["B"] > 0 for p in j["probs"]), mode


@pytest.mark.slow
def test_embedded_base_model_judges_in_completion_mode_with_a_template(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    """The quickstart's judge: the embedded Gemma 3 270M base model behind `huarizo serve`, asked in completion mode
    with the alpaca template; every comparison gets a verdict from its token probabilities."""
    from huarizo.formats.models import resolve_model

    n = 3
    files = {m: _short_answers(tmp_path, vicuna, m, n) for m in ("bard", "gpt35")}
    with served(Path(resolve_model("embedded")), "embedded", tmp_path / "serve.log") as url:
        s = grade(
            GradeConfig(
                questions=str(vicuna["questions"]),
                answers=[str(files["bard"])],
                baseline=str(files["gpt35"]),
                judge={"model": "openai/embedded", "api_base": url, "cache_dir": str(tmp_path / "cache")},
                template="alpaca",
                out=str(tmp_path / "out"),
                limit=n,
                bootstrap=100,
            ),
            progress=False,
        ).summary
    assert (s["n"], s["errors"], s["verdicts_read"]) == (n, 0, {"logprobs": 2 * n})
    assert (
        s["position_consistency"] is not None
        and "from the judge's token probabilities" in (tmp_path / "out" / "report.md").read_text()
    )

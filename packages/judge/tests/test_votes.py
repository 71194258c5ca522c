"""People's votes from the arena of `huarizo serve` as judgments (`score`) and as the labels of the judge audit
(`grade --labels`, `score --labels`), against hand counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats.cli import main
from huarizo.formats.errors import HuarizoError
from huarizo.formats.testing import ScriptedServer, prefer_longer
from huarizo.judge import GradeConfig, ScoreConfig, grade, load_labels, score
from huarizo.judge.stats import agreement, bootstrap_ci

TUNED, BASE = "tuned", "base"
# question id -> (tuned's answer, base's answer): tuned is longer on 1-4, shorter on 5, as long on 6
ANSWERS = {
    1: ("Llamas are camelids from the Andes, kept for wool and as pack animals.", "Animals."),
    2: ("Seventeen times twenty-three is three hundred and ninety-one.", "391."),
    3: ("Rayleigh scattering: shorter wavelengths scatter more, so the sky looks blue.", "Scattering."),
    4: ("A haiku has three lines of five, seven and five syllables.", "Three lines."),
    5: ("Paris.", "The capital of France is Paris, on the Seine."),
    6: ("Maybe so.", "Maybe no."),
}
# (voter, item, shown order A/B, vote): exactly what the arena writes, one line per vote
VOTES = [
    ("ana", 1, (TUNED, BASE), "A"),  # tuned
    ("ana", 2, (TUNED, BASE), "B"),  # base
    ("ana", 3, (BASE, TUNED), "tie"),
    ("ana", 4, (TUNED, BASE), "both_bad"),  # a tie
    ("ana", 5, (BASE, TUNED), "A"),  # base
    ("ana", 6, (TUNED, BASE), "A"),  # tuned
    ("bob", 1, (BASE, TUNED), "B"),  # tuned
    ("bob", 2, (TUNED, BASE), "A"),  # tuned
    ("bob", 5, (TUNED, BASE), "B"),  # base
]


def _vote(voter: str, item: int, shown: tuple[str, str], vote: str) -> dict[str, Any]:
    winner = {"A": shown[0], "B": shown[1]}.get(vote, vote)
    return {
        "voter": voter,
        "time": "2026-12-01T10:00:00.000Z",
        "item": str(item),
        "shown": list(shown),
        "vote": vote,
        "winner": winner,
        "models": [TUNED, BASE],
        "category": "generic",
    }


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    questions = [{"question_id": q, "text": f"Question {q}?", "category": "generic"} for q in ANSWERS]
    return {
        "questions": _write(tmp_path / "question.jsonl", questions),
        TUNED: _write(
            tmp_path / "tuned.jsonl", [{"question_id": q, "text": a[0], "model_id": TUNED} for q, a in ANSWERS.items()]
        ),
        BASE: _write(
            tmp_path / "base.jsonl", [{"question_id": q, "text": a[1], "model_id": BASE} for q, a in ANSWERS.items()]
        ),
        "votes": _write(tmp_path / "votes.jsonl", [_vote(*v) for v in VOTES]),
    }


def test_score_reads_votes_as_peoples_comparisons(files: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "people"
    assert main(["judge", "score", str(files["votes"]), "--out", str(out), "--bootstrap", "200"]) == 0
    s = json.loads((out / "summary.json").read_text())
    # hand count, from tuned's side: wins ana 1, 6, bob 1, 2; ties ana 3, 4 (both bad); losses ana 2, 5, bob 5
    assert (s["n"], s["wins"], s["ties"], s["losses"]) == (9, 4, 2, 3)
    assert s["win_rate"] == pytest.approx(5 / 9)
    lo, hi = s["win_rate_ci"]
    assert lo < 5 / 9 < hi and s["standard_error"] > 0
    assert s["baseline"] == BASE and s["judge"] == "people (arena votes)" and s["verdicts_read"] == {"vote": 9}
    # the people's own first-position preference: A in 4 of their 7 decided votes
    assert s["first_position_preference"] == pytest.approx(4 / 7)
    assert s["sources"][str(files["votes"])]["kind"] == "arena votes"
    report = (out / "report.md").read_text()
    assert "| tuned | base | 9 | 4 | 2 | 3 | 55.6% ±" in report
    assert "9 from votes" in report
    assert "arena votes" in capsys.readouterr().out


def test_grade_with_votes_as_labels_matches_a_hand_count(files: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with ScriptedServer(prefer_longer) as server:
        args = ["judge", "grade", "--questions", str(files["questions"]), "--answers", str(files[TUNED])]
        args += ["--baseline", str(files[BASE]), "--judge-model", "openai/judge", "--judge-api-base", server.url]
        args += ["--judge-cache-dir", str(tmp_path / "cache"), "--verdict", "text", "--bootstrap", "300"]
        args += ["--labels", str(files["votes"]), "--out", str(tmp_path / "graded")]
        assert main(args) == 0
    lab = json.loads((tmp_path / "graded" / "summary.json").read_text())["label_agreement"]
    # the judge prefers the longer answer: tuned on 1-4, base on 5, a tie on 6. Against the 9 votes:
    # ana 1 yes, 2 no, 3 no (vote tie), 4 no (both bad), 5 yes, 6 no (judge tie); bob 1, 2, 5 yes
    assert (lab["labels"], lab["n"]) == (9, 9)
    assert lab["agreement_with_ties"] == pytest.approx(5 / 9)
    # without ties: ana 3, 4 (label ties) and 6 (judge tie) drop out: 5 of 6
    assert (lab["n_decided"], lab["agreement_without_ties"]) == (6, pytest.approx(5 / 6))
    assert (lab["judge_ties"], lab["label_ties"]) == (1, 2)
    for kind in ("with_ties", "without_ties"):
        lo, hi = lab[f"agreement_{kind}_ci"]
        assert 0 <= lo <= lab[f"agreement_{kind}"] <= hi <= 1
    # ana and bob both voted on 1 (agree), 2 (disagree), 5 (agree)
    people = lab["between_people"]
    assert (people["voters"], people["n"], people["agreement_with_ties"]) == (2, 3, pytest.approx(2 / 3))
    (w,) = lab["win_rates"]
    assert (w["model"], w["opponent"], w["labels"], w["questions"]) == (TUNED, BASE, 9, 6)
    assert (w["wins"], w["ties"], w["losses"], w["win_rate"]) == (4, 2, 3, pytest.approx(5 / 9))
    assert w["judge_win_rate"] == pytest.approx(4.5 / 6)  # the judge on the same 6 questions
    assert w["win_rate_ci"][0] <= 5 / 9 <= w["win_rate_ci"][1]
    report = (tmp_path / "graded" / "report.md").read_text()
    assert "### Agreement with people (arena votes)" in report
    assert "### Win rates: the people and the judge, on the same questions" in report
    assert "| tuned | base | 9 | 6 | 55.6% ±" in report and "75.0% ±" in report
    assert "Between people (2 voters; 3 pairs of votes on the same comparison): 66.7%" in report
    assert "agreement with labels: 0.556 [" in capsys.readouterr().out

    # the same audit from the judgments already made, with no judge asked
    cfg = ScoreConfig(
        files=[str(tmp_path / "graded" / "judgments.jsonl")],
        labels=[str(files["votes"])],
        questions=str(files["questions"]),
        out=str(tmp_path / "rescored"),
        bootstrap=300,
    )
    again = score(cfg).summary["label_agreement"]
    assert again == lab


def test_labels_of_questions_or_models_not_graded_are_left_out(files: dict[str, Path], tmp_path: Path) -> None:
    extra = [_vote("cy", 99, (TUNED, BASE), "A"), {**_vote("cy", 1, (TUNED, "other"), "A"), "models": [TUNED, "other"]}]
    votes = _write(tmp_path / "more.jsonl", [_vote(*v) for v in VOTES] + extra)
    with ScriptedServer(prefer_longer) as server:
        cfg = GradeConfig(
            questions=str(files["questions"]),
            answers=[str(files[TUNED])],
            baseline=str(files[BASE]),
            judge={"model": "openai/judge", "api_base": server.url, "cache_dir": str(tmp_path / "cache")},
            verdict="text",
            labels=[str(votes)],
            bootstrap=100,
            out=str(tmp_path / "out"),
        )
        lab = grade(cfg, progress=False).summary["label_agreement"]
    assert lab["labels"] == lab["n"] == 9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vote": "C"}, "field 'vote': 'C' is not one of A, B, tie, both_bad"),
        ({"shown": [TUNED, "other"]}, "field 'shown'"),
        ({"models": [TUNED]}, "field 'models'"),
    ],
)
def test_a_bad_vote_is_one_line_naming_the_file_and_line(
    files: dict[str, Path], tmp_path: Path, capsys, change: dict[str, Any], message: str
) -> None:  # type: ignore[no-untyped-def]
    rows = [_vote(*v) for v in VOTES]
    rows[1] = {**rows[1], **change}
    bad = _write(tmp_path / "bad.jsonl", rows)
    assert main(["judge", "score", str(bad), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: line 2: ") and message in err and err.count("\n") == 1
    with pytest.raises(HuarizoError, match=rf"{bad.name}: line 2: .*\(arena vote\)"):
        load_labels(bad, None)  # the labels' reader says the same


def test_reviews_as_labels_need_the_answer_files(tmp_path: Path) -> None:
    review = _write(
        tmp_path / "review.jsonl", [{"question_id": 1, "answer1_id": "a", "answer2_id": "b", "text": "8 7"}]
    )
    with pytest.raises(HuarizoError, match="name answers by id"):
        load_labels(review, None)


def test_agreement_intervals_resample_questions_together() -> None:
    always = agreement([("1", "1")] * 6, ["q1", "q1", "q2", "q2", "q3", "q3"], n=200)
    assert always["agreement_with_ties_ci"] == [1.0, 1.0]
    # one question holds all the disagreements: resampling questions, the interval is wide
    pairs = [("1", "2")] * 4 + [("1", "1")] * 4
    lo, hi = bootstrap_ci([float(j == lab) for j, lab in pairs], ["q1"] * 4 + ["q2", "q3", "q4", "q5"], n=500)
    assert lo < 0.3 and hi == 1.0

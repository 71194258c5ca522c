"""Nothing stale, secret or unsafe in a run folder: another judge's answers, the API key, hung requests, names that
are HTML, broken cache entries."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats.cli import main
from huarizo.formats.testing import Reply, ScriptedServer, prefer_first, prefer_longer, prompt_text
from huarizo.judge import GradeConfig, JudgeIncomplete, grade

SECRET = "sk-test-0123456789abcdef-never-write-me"


def _cfg(server: ScriptedServer, tmp: Path, vicuna: dict[str, Any], **kw: Any) -> GradeConfig:
    judge = {"model": "openai/judge", "api_base": server.url, "cache_dir": str(tmp / "cache"), **kw.pop("judge", {})}
    return GradeConfig(
        judge=judge,
        questions=str(vicuna["questions"]),
        answers=[str(vicuna["answer"]("bard"))],
        baseline=str(vicuna["answer"]("vicuna-13b")),
        out=str(tmp / kw.pop("out", "out")),
        bootstrap=100,
        **kw,
    )


def test_two_judges_with_one_name_on_two_ports_each_judge_their_own(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    """Neither server reports a fingerprint (a stock vLLM, a stub): the second run asks its own server, never the
    first one's cached verdicts."""
    with ScriptedServer(prefer_longer) as first:
        a = grade(_cfg(first, tmp_path, vicuna, limit=10, out="a"), progress=False).summary
    with ScriptedServer(prefer_first) as second:
        b = grade(_cfg(second, tmp_path, vicuna, limit=10, out="b"), progress=False).summary
        assert len(second.requests) == 1 + 20  # the probe and both orders of 10 questions
    assert a["position_consistency"] == 1.0 and b["position_consistency"] == 0.0
    assert b["usage"]["cached"] == 0 and b["usage"]["requests"] == 21


def test_the_key_reaches_the_judge_and_no_file_under_out(tmp_path, vicuna, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HUARIZO_TEST_JUDGE_KEY", SECRET)
    monkeypatch.setenv("HUARIZO_JUDGE_API_KEY", "")  # where --api-key puts the key: restored after the test
    with ScriptedServer(prefer_longer) as server:
        cfg = _cfg(server, tmp_path, vicuna, limit=3, judge={"api_key_env": "HUARIZO_TEST_JUDGE_KEY"})
        grade(cfg, progress=False)
        flags = ["--questions", cfg.questions, "--answers", cfg.answers[0], "--baseline", str(cfg.baseline)]
        flags += ["--judge", "openai/judge", "--api-base", server.url, "--api-key", SECRET, "--limit", "3"]
        assert (
            main(["judge", "grade", *flags, "--out", str(tmp_path / "cli"), "--cache-dir", str(tmp_path / "c2")]) == 0
        )
        sent = [{k.lower(): v for k, v in h.items()}.get("authorization") for h in server.headers]
    assert sent and all(h == f"Bearer {SECRET}" for h in sent)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10 and not [p for p in files if SECRET.encode() in p.read_bytes()]
    assert "api_key_env: HUARIZO_TEST_JUDGE_KEY" in (tmp_path / "out/config.yaml").read_text()
    assert "api_key_env: HUARIZO_JUDGE_API_KEY" in (tmp_path / "cli/config.yaml").read_text()


def test_request_timeout_bounds_a_hung_judge(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()

    def hangs_on_one(req: dict[str, Any]) -> str | Reply:
        if "Python and JavaScript" in prompt_text(req):
            release.wait(timeout=30)  # hung until the test ends
        return prefer_longer(req)

    with ScriptedServer(hangs_on_one) as server:
        cfg = _cfg(server, tmp_path, vicuna, limit=4, verdict="text", judge={"request_timeout": 0.5, "max_retries": 0})
        with pytest.raises(JudgeIncomplete, match=r"1 of 4 items got no verdict \(1 request failed\)"):
            grade(cfg, progress=False)
        release.set()
    js = [json.loads(line) for line in (tmp_path / "out/judgments.jsonl").open()]
    (hung,) = [j for j in js if j["error"]]
    assert hung["question_id"] == "3" and "Timeout" in hung["error"]


def test_model_names_with_html_are_escaped_in_the_report(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    evil = "<img src=x onerror=alert(1)>|x"
    rows = [json.loads(line) for line in vicuna["answer"]("bard").open()]
    answers = tmp_path / "evil.jsonl"
    answers.write_text("".join(json.dumps({**r, "model_id": evil}) + "\n" for r in rows))
    with ScriptedServer(prefer_longer) as server:
        cfg = _cfg(server, tmp_path, vicuna, limit=3)
        grade(cfg.model_copy(update={"answers": [str(answers)]}), progress=False)
    report = (tmp_path / "out/report.md").read_text()
    assert "<img" not in report and "&lt;img src=x onerror=alert(1)&gt;\\|x" in report


def test_broken_cache_entries_are_asked_again_not_a_crash(tmp_path, vicuna, caplog) -> None:  # type: ignore[no-untyped-def]
    with ScriptedServer(prefer_longer) as server:
        cfg = _cfg(server, tmp_path, vicuna, limit=3, verdict="text")
        first = grade(cfg, progress=False).summary
        entries = sorted((tmp_path / "cache").rglob("*.json"))
        entries[0].write_text(json.dumps({"response": {"text": "[[A]]", "colour": "red"}}))  # valid JSON, wrong fields
        entries[1].write_text('{"request": ')
        with caplog.at_level("WARNING", logger="huarizo.formats.llm"):
            again = grade(cfg, progress=False)
    assert len(entries) == 6 and again.counts["asked"] == 2 and again.counts["cached"] == 4
    assert again.summary["usage"]["cache_ignored"] == 2 and len(caplog.records) == 2
    assert again.summary["wins"] == first["wins"] and again.summary["n"] == 3
    assert "2 unreadable cache entries ignored" in (tmp_path / "out/report.md").read_text()

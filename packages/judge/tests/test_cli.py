"""`huarizo judge grade` from flags and from a YAML config, as scripts call it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from huarizo.formats.cli import main
from huarizo.formats.testing import ScriptedServer, prefer_longer
from huarizo.judge import AnswerConfig, GradeConfig


def test_grade_flags_write_summary_judgments_report(tmp_path, vicuna, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    with ScriptedServer(prefer_longer) as server:
        rc = main(
            [
                "judge",
                "grade",
                "--mode",
                "pairwise",
                "--questions",
                str(vicuna["questions"]),
                "--answers",
                str(vicuna["answer"]("alpaca-13b")),
                "--baseline",
                str(vicuna["answer"]("vicuna-13b")),
                "--judge",
                "openai/judge",
                "--api-base",
                server.url,
                "--api-key",
                "x",
                "--concurrency",
                "4",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--limit",
                "8",
                "--out",
                str(out),
            ]
        )
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "n",
        "wins",
        "losses",
        "ties",
        "win_rate",
        "win_rate_ci",
        "inconsistent",
        "position_consistency",
        "prefers_longer",
        "errors",
    ):
        assert key in s, key
    assert s["n"] == 8 and len((out / "judgments.jsonl").read_text().splitlines()) == 8
    assert (out / "report.md").exists() and "win rate" in capsys.readouterr().out


def test_grade_from_yaml_with_set_override(tmp_path, vicuna) -> None:  # type: ignore[no-untyped-def]
    with ScriptedServer(lambda req: "Rating: [[6]]") as server:
        cfg = tmp_path / "grade.yaml"
        cfg.write_text(
            f"mode: single\nquestions: {vicuna['questions']}\nanswers:\n  - {vicuna['answer']('llama-13b')}\n"
            f"judge:\n  model: openai/judge\n  api_base: {server.url}\n  cache_dir: {tmp_path / 'cache'}\n"
            f"verdict: text\nlimit: 3\nout: {tmp_path / 'out'}\n"
        )
        # file < --set < flags: the flag wins over --set, which wins over the file
        assert main(["judge", "grade", str(cfg), "--set", "limit=4", "--limit", "5", "--set", "plots=false"]) == 0
        assert len(server.requests) == 5
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["models"]["llama-13b:v1"]["mean"] == 6.0
    assert not list((tmp_path / "out").glob("*.png"))  # --set plots=false


def test_bad_config_is_an_error_without_traceback(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "grade.yaml"
    cfg.write_text("mode: pairwise\nquestions: q.jsonl\nanswers: [a.jsonl]\njudge: j\nout: o\ncolour: red\n")
    assert main(["judge", "grade", str(cfg)]) == 1
    assert "unknown key 'colour'" in capsys.readouterr().err
    assert (
        main(
            [
                "judge",
                "grade",
                "--questions",
                str(tmp_path / "missing.jsonl"),
                "--answers",
                "a.jsonl",
                "--judge",
                "j",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_shipped_configs_validate() -> None:
    folder = Path(__file__).resolve().parents[3] / "configs" / "judge"
    if not folder.is_dir():
        pytest.skip("configs/judge not beside the package (installed alone)")
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        cfg = (AnswerConfig if f.name.startswith("answer") else GradeConfig).load(f)
        assert cfg.out.startswith("runs/judge/")


def test_config_list_says_what_each_config_is_for(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["config", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "Configuration of `huarizo judge grade`" in lines["judge-grade"]
    assert "Configuration of `huarizo judge harness`" in lines["judge-harness"]

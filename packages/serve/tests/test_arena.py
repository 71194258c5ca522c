"""The arena over plain HTTP: votes from many threads at once, one vote per voter and item, nothing lost on a crash
(`kill -9` of `huarizo serve`), live answers asked once and kept in the evaluation-set layouts the judge reads, and
the pages' defences (CSRF token, Origin, Host, escaping, headers)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from huarizo.formats import HuarizoError, load_answers, load_questions
from huarizo.formats.testing import ScriptedServer, prompt_text
from huarizo.serve import ServeConfig, start_server

HUARIZO = [sys.executable, "-c", "from huarizo.formats.cli import main; raise SystemExit(main())"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "NO_COLOR": "1"}


def test_votes_from_many_threads_all_land_once(tiny_model_dir: Path, arena_files, kit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "arena"
    with start_server(kit.config(tiny_model_dir, arena_files, out)) as server:
        voters = [kit.Voter(server.url, f"voter {i}") for i in range(8)]
        choices = ("A", "B", "tie", "both_bad")
        jobs = [
            (v, q["question_id"], choices[(i + k) % 4])
            for k, v in enumerate(voters)
            for i, q in enumerate(kit.questions)
        ]
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda job: job[0].vote(str(job[1]), job[2]).status_code, jobs))
        assert codes == [200] * 40
        # the same voter, the same item, four times at once: one vote lands, three are refused
        dup = kit.Voter(server.url, "eager")
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: dup.vote("1", "A"), range(4)))
        assert sorted(r.status_code for r in answers) == [200, 409, 409, 409]
        refused = next(r for r in answers if r.status_code == 409).json()["error"]["message"]
        assert refused == "eager has already voted on item 1"
        assert voters[0].next() == {"item": None, "voted": 5, "total": 5, "free": False}
        for v in [*voters, dup]:
            v.close()
    votes = kit.votes_in(out)
    assert len(votes) == 41 and len({(v["voter"], v["item"]) for v in votes}) == 41
    for v in votes:
        assert set(v) == {"voter", "time", "item", "shown", "vote", "winner", "models", "category"}
        assert v["models"] == list(kit.models) and sorted(v["shown"]) == sorted(kit.models)
        assert v["winner"] == {"A": v["shown"][0], "B": v["shown"][1]}.get(v["vote"], v["vote"])


def test_the_order_is_drawn_per_voter_and_item_and_kept(tiny_model_dir: Path, arena_files, kit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "arena"
    with start_server(kit.config(tiny_model_dir, arena_files, out)) as server:
        voters = [kit.Voter(server.url, f"v{i}") for i in range(12)]
        first = [v.next()["item"] for v in voters]
        again = [v.next()["item"] for v in voters]
        assert first == again  # a reload shows the same answers in the same order
        orders = {tuple(item["answers"][0]) for item in first}
        assert len(orders) == 2  # over 12 voters, both orders are drawn (chance of one: 1 in 2048)
        shown_a = {tuple(kit.answers[m][1]): m for m in kit.models}
        for v, item in zip(voters, first, strict=True):
            assert kit.models[0] not in json.dumps(item) and kit.models[1] not in json.dumps(item)
            record = v.vote("1", "A").json()
            assert record["shown"][0] == shown_a[tuple(item["answers"][0])]  # the order recorded is the one shown
            v.close()


def test_a_crash_loses_no_acknowledged_vote(tiny_model_dir: Path, arena_files, kit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "arena"
    cmd = [*HUARIZO, "serve", "--model", str(tiny_model_dir), "--port", "0", "--arena-out", str(out)]
    cmd += ["--arena-questions", str(arena_files["questions"])]
    cmd += [a for m in kit.models for a in ("--arena-answers", str(arena_files[m]))]

    def started() -> tuple[subprocess.Popen[str], str, str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if m := re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line):
                return proc, m.group(1), "".join(lines)
        raise AssertionError("huarizo serve did not start:\n" + "".join(lines))

    proc, url, _ = started()
    try:
        ana = kit.Voter(url, "ana")
        assert ana.vote("1", "A").status_code == 200 and ana.vote("2", "both_bad").status_code == 200
        ana.close()
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown of any kind
        proc.wait()
    with (out / "votes.jsonl").open("a") as fh:  # and a vote cut off mid-line, as by a crash during its write
        fh.write('{"voter": "ana", "item": "3", "sho')
    proc, url, log = started()
    try:
        ana = kit.Voter(url, "ana")  # a new session (the old one died with its server): the same name resumes
        assert ana.next()["item"]["item"] == "3" and ana.next()["voted"] == 2
        assert ana.vote("1", "B").status_code == 409
        assert ana.vote("3", "tie").status_code == 200
        ana.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert "dropping a last line cut off by a crash" in log
    assert [(v["item"], v["vote"]) for v in kit.votes_in(out)] == [("1", "A"), ("2", "both_bad"), ("3", "tie")]


def test_one_server_per_arena_folder_and_one_pair_of_models(
    tiny_model_dir: Path, arena_files, kit, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "arena"
    cfg = kit.config(tiny_model_dir, arena_files, out)
    with start_server(cfg), pytest.raises(HuarizoError, match="another server is using this arena folder"):
        start_server(cfg)
    with start_server(cfg):  # free again once the first server stopped
        pass
    other = tmp_path / "other.jsonl"
    other.write_text(arena_files[kit.models[1]].read_text().replace(kit.models[1], "gnu-3b"))
    swapped = {**arena_files, kit.models[1]: other}
    with pytest.raises(HuarizoError, match=f"holds votes on {kit.models[0]} vs {kit.models[1]}; this arena compares"):
        start_server(kit.config(tiny_model_dir, swapped, out))


def test_arena_mistakes_are_one_line_errors(tiny_model_dir: Path, arena_files, kit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    rows = arena_files[kit.models[1]].read_text().splitlines()
    rows[1] = json.dumps({"question_id": 2, "choices": [{"turns": ["x"]}]})
    bad.write_text("\n".join(rows) + "\n")
    base = [*HUARIZO, "serve", "--model", str(tiny_model_dir), "--port", "0", "--arena-questions"]
    base += [str(arena_files["questions"]), "--arena-answers", str(arena_files[kit.models[0]])]
    cases = [
        (
            ["--arena-answers", str(bad), "--arena-out", str(tmp_path / "a")],
            f"{bad}: line 2: field 'model_id': missing",
        ),
        (["--arena-answers", str(arena_files[kit.models[1]])], "out: the folder the votes are written to is needed"),
        (["--arena-out", str(tmp_path / "b")], "the answer files must hold two models' answers (found: okapi-7b)"),
    ]
    for extra, message in cases:
        run = subprocess.run([*base, *extra], capture_output=True, text=True, env=ENV, timeout=120)
        assert run.returncode == 1 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and run.stderr.splitlines()[-1].startswith("error: ")
    with pytest.raises(ValueError, match=r"answers \(from files\) and models \(live\) exclude each other"):
        ServeConfig(arena={"out": "x", "questions": "q", "answers": ["a"], "models": ["served", "openai/x"]})
    with pytest.raises(ValueError, match="the arena is a page of the built-in server"):
        ServeConfig(backend="vllm", arena={"out": "x", "models": ["served", "openai/x"]})


def _judge_like(req: dict[str, Any]) -> str:
    return f"Scripted reply to: {prompt_text(req).splitlines()[-1]}"


def test_live_answers_are_asked_once_kept_and_readable_by_the_judge(
    tiny_model_dir: Path, arena_files, kit, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "live"
    with ScriptedServer(_judge_like, model="other") as other:
        arena = {
            "out": str(out),
            "questions": str(arena_files["questions"]),
            "models": ["served", {"model": "openai/other", "api_base": other.url}],
            "max_tokens": 8,
        }
        cfg = ServeConfig(model=str(tiny_model_dir), port=0, model_name="tiny-test", dtype="float32", arena=arena)
        with start_server(cfg) as server:
            ana, bob = (kit.Voter(server.url, name) for name in ("ana", "bob"))
            with ThreadPoolExecutor(2) as pool:  # both ask for item 1 at once: it is answered once
                seen = list(pool.map(lambda v: v.next()["item"], (ana, bob)))
            assert sorted(map(json.dumps, seen[0]["answers"])) == sorted(map(json.dumps, seen[1]["answers"]))
            assert len(other.requests) == 1
            assert "tiny-test" not in ana.http.get("/arena").text + json.dumps(seen)  # blind: no name before the vote
            assert ana.vote("1", "A").status_code == 200
            item4 = None
            for _ in range(3):
                item4 = ana.next()["item"]
                assert ana.vote(item4["item"], "tie").status_code == 200
            assert item4 is not None and item4["item"] == "4" and len(item4["answers"][0]) == 2  # two turns
            # the second turn's request carries the first turn and the model's own first answer
            assert [m["role"] for m in other.requests[-1]["messages"]] == ["user", "assistant", "user"]
            asked = len(other.requests)
        with start_server(cfg) as server:  # a restart answers nothing again
            bob = kit.Voter(server.url, "bob")
            assert bob.next()["item"]["item"] == "1" and len(other.requests) == asked
    answers = load_answers(out / "answers.jsonl", load_questions(arena_files["questions"]))
    assert set(answers) == {"tiny-test", "other"} and set(answers["other"]) == {"1", "2", "3", "4"}
    first = kit.questions[0]["turns"][0]
    assert answers["other"]["1"].turns == [_judge_like({"messages": [{"role": "user", "content": first}]})]


def test_live_prompts_written_by_voters(tiny_model_dir: Path, tmp_path: Path, kit) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "free"
    with ScriptedServer(_judge_like, model="other") as other:
        arena = {
            "out": str(out),
            "models": [{"model": "openai/other", "api_base": other.url}, "served"],
            "max_tokens": 8,
        }
        cfg = ServeConfig(model=str(tiny_model_dir), port=0, model_name="tiny-test", dtype="float32", arena=arena)
        with start_server(cfg) as server:
            ana = kit.Voter(server.url, "ana")
            assert ana.next() == {"item": None, "voted": 0, "total": None, "free": True}
            got = ana.post("/arena/api/ask", {"prompt": "  Name a camelid.  "}).json()
            item = got["item"]
            assert item["turns"] == ["Name a camelid."] and item["category"] == "arena" and got["total"] is None
            assert "Scripted reply to: Name a camelid." in [a[0] for a in item["answers"]]
            again = ana.post("/arena/api/ask", {"prompt": "Another?"})
            assert again.status_code == 400 and "vote on your last prompt" in again.json()["error"]["message"]
            bob = kit.Voter(server.url, "bob")
            assert bob.next()["item"] is None  # a prompt is its writer's
            assert bob.vote(item["item"], "A").status_code == 404
            assert ana.vote(item["item"], "B").status_code == 200
            assert ana.next() == {"item": None, "voted": 1, "total": None, "free": True}
    questions = load_questions(out / "questions.jsonl")
    assert [(q.question_id, q.turns) for q in questions.questions] == [("1", ["Name a camelid."])]
    assert set(load_answers(out / "answers.jsonl", questions)) == {"other", "tiny-test"}
    (vote,) = kit.votes_in(out)
    assert vote["models"] == ["other", "tiny-test"] and vote["voter"] == "ana" and vote["item"] == "1"


def test_pages_refuse_cross_site_posts_foreign_hosts_and_forged_sessions(
    tiny_model_dir: Path, arena_files, kit, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "arena"
    with start_server(kit.config(tiny_model_dir, arena_files, out)) as server:
        ana = kit.Voter(server.url, "ana")
        assert ana.http.post("/arena/api/vote", json={"item": "1", "vote": "A"}).status_code == 403  # no token
        evil = {"X-CSRF-Token": ana.csrf, "Origin": "http://127.0.0.1:1"}  # another origin (same site)
        assert ana.http.post("/arena/api/vote", json={"item": "1", "vote": "A"}, headers=evil).status_code == 403
        wrong = {"X-CSRF-Token": ana.csrf[:-2] + "xx", "Origin": server.url}
        assert ana.http.post("/arena/api/vote", json={"item": "1", "vote": "A"}, headers=wrong).status_code == 403
        form = {"voter": "mallory", "csrf": "guess"}
        assert ana.http.post("/arena/voter", data=form, headers={"Origin": server.url}).status_code == 403
        assert kit.votes_in(out) == [] and 'Voting as <b id="voter">ana</b>' in ana.http.get("/arena").text
        # a DNS-rebinding page reaches loopback under another name: refused
        assert ana.http.get("/ui", headers={"Host": "evil.example:80"}).status_code == 400
        assert ana.http.get("/arena/api/next", headers={"Host": "evil.example"}).status_code == 400
        # a forged or foreign session cookie is no session
        forged = httpx.get(f"{server.url}/arena/api/next", cookies={"huarizo_session": "e30.AAAA"})
        assert forged.status_code == 401
        page = ana.http.get("/ui")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        assert ana.http.get("/static/ui.js").headers["content-type"].startswith("text/javascript")
        for hidden in ("layout.html", "..%2Fweb.py", "%2E%2E/arena.py", "nothing.js"):
            assert ana.http.get(f"/static/{hidden}").status_code == 404
        assert httpx.get(f"{server.url}/").headers["location"] == "/ui"
        assert "/arena" not in httpx.get(f"{server.url}/openapi.json").text
        # a name with markup is shown as text
        sly = kit.Voter(server.url, "<script>alert(1)</script>")
        page = sly.http.get("/arena").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
        for v in (ana, sly):
            v.close()


def test_the_pages_can_be_turned_off(tiny_model_dir: Path) -> None:
    cfg = ServeConfig(model=str(tiny_model_dir), port=0, dtype="float32", web=False)
    with start_server(cfg) as server:
        assert httpx.get(f"{server.url}/ui").status_code == 404
        assert httpx.get(f"{server.url}/v1/models").status_code == 200

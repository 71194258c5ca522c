"""`huarizo clean-sharegpt`: HTML, roles, drops with reasons, dedupe, language, splitting that never loses a turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from huarizo.datagen.sharegpt import CleanConfig, clean_conversations, html_to_markdown, split_conversation
from huarizo.formats import load, write_records
from huarizo.formats.cli import main

HTML_TURN = (
    '<div class="markdown prose"><p>Here is <strong>the</strong> fix:</p><pre><div class="bg-black"><div class="flex">'
    '<span>python</span><button>Copy code</button></div><div><code class="!whitespace-pre hljs language-python">'
    '<span class="hljs-keyword">def</span> <span class="hljs-title">f</span>(x):\n    <span>return</span> x &lt; 3\n'
    "</code></div></div></pre><ol><li>first</li><li>second</li></ol></div>"
)


def _conv(cid: str, *values: str, roles: tuple[str, ...] = ("human", "gpt")) -> dict[str, Any]:
    return {"id": cid, "conversations": [{"from": roles[i % len(roles)], "value": v} for i, v in enumerate(values)]}


def test_html_becomes_markdown_with_fenced_code() -> None:
    md = html_to_markdown(HTML_TURN)
    assert "```python\ndef f(x):\n    return x < 3\n```" in md
    assert "**the**" in md and "1. first" in md and "Copy code" not in md and "<" not in md.replace("x < 3", "")
    assert html_to_markdown("plain a < b text") == "plain a < b text"


def test_drops_with_reasons_and_normalises_roles() -> None:
    raws = [
        _conv("ok", "Hi", HTML_TURN, roles=("user", "chatgpt")),
        {"id": "empty", "conversations": []},
        _conv("short", "Only a question"),
        _conv("gap", "Question", "", roles=("human", "gpt")),
        {"id": "bad", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                        {"from": "gpt", "value": "c"}]},
        _conv("dup", "Hi", HTML_TURN, roles=("user", "chatgpt")),
        _conv("trim", "lead", "Q", "A", "dangling", roles=("gpt", "human")),
        {"id": "who", "conversations": [{"from": "alien", "value": "x"}]},
    ]  # fmt: skip
    result = clean_conversations(raws)
    assert [c["id"] for c in result.kept] == ["ok", "trim"]
    assert (
        result.kept[0]["conversations"][0]["from"] == "human"
        and "```python" in result.kept[0]["conversations"][1]["value"]
    )
    assert [t["value"] for t in result.kept[1]["conversations"]] == ["Q", "A"]
    reasons = {r["id"]: r["reason"] for r in result.rejected}
    assert reasons == {"empty": "empty", "short": "too-short", "gap": "empty-turn", "bad": "not-alternating",
                       "dup": "duplicate", "who": "unknown-role:alien"}  # fmt: skip


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=12), st.integers(16, 600))
@settings(max_examples=200, deadline=None)
def test_split_keeps_every_turn_in_order_within_budget(pairs: list[tuple[int, int]], budget: int) -> None:
    turns, lengths = [], []
    for k, (a, b) in enumerate(pairs):
        turns += [{"from": "human", "value": f"q{k}"}, {"from": "gpt", "value": f"a{k}"}]
        lengths += [a, b]
    parts = split_conversation("c", turns, lengths, budget)
    assert [t for p in parts for t in p["conversations"]] == turns  # nothing lost, nothing repeated
    for p in parts:
        conv = p["conversations"]
        assert conv[0]["from"] == "human" and conv[-1]["from"] == "gpt"
        n = sum(lengths[turns.index(t)] for t in conv)
        assert n <= budget or len(conv) == 2  # only a single over-long pair may exceed the budget
    assert [p["id"] for p in parts] == (["c"] if len(parts) == 1 else [f"c_{k}" for k in range(len(parts))])


def test_split_keeps_the_system_turn_in_every_part() -> None:
    turns = [{"from": "system", "value": "Be brief."}] + [
        {"from": r, "value": f"{r} {k}"} for k in range(3) for r in ("human", "gpt")
    ]
    parts = split_conversation("s", turns, [2] + [5] * 6, 14)
    assert [p["id"] for p in parts] == ["s_0", "s_1", "s_2"]
    assert all(p["conversations"][0]["value"] == "Be brief." for p in parts)


def test_language_filter_with_py3langid() -> None:
    raws = [
        _conv("en", "Can you explain how photosynthesis works in plants?", "Plants turn light into sugar."),
        _conv("es", "¿Puedes explicarme cómo funciona la fotosíntesis en las plantas?", "Las plantas usan la luz."),
        _conv("de", "Kannst du mir bitte erklären, wie die Photosynthese bei Pflanzen funktioniert?", "Mit Licht."),
    ]
    result = clean_conversations(raws, CleanConfig(lang="en"))
    assert [c["id"] for c in result.kept] == ["en"]
    assert {r["reason"] for r in result.rejected} == {"language:es", "language:de"}


def test_real_sharegpt_sample_with_a_real_tokenizer(shared_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    src = shared_data / "fastchat/dummy_conversation.json"
    raws = json.loads(src.read_text())
    out = tmp_path / "clean.jsonl"
    assert main(["clean-sharegpt", str(src), str(out), "--tokenizer", str(tiny_model_dir), "--max-length", "64"]) == 0
    kept = load(out, "sharegpt")
    by_id: dict[str, list[str]] = {}
    for conv in kept:
        base = conv.id.rsplit("_", 1)[0] if conv.id not in {r["id"] for r in raws} else conv.id
        by_id.setdefault(base, []).extend(t.value for t in conv.conversations)
    rejected = {json.loads(line)["id"] for line in (tmp_path / "clean.jsonl.rejects.jsonl").read_text().splitlines()}
    assert any(c.id.endswith("_1") for c in kept)  # some conversations were split
    for raw in raws:
        if raw["id"] not in rejected:
            assert by_id[raw["id"]] == [t["value"] for t in raw["conversations"]]  # every turn, in order


def test_cli_reports_drops(tmp_path: Path, capsys: Any) -> None:
    src, out = tmp_path / "in.json", tmp_path / "out.jsonl"
    write_records(src, [_conv("a", "Q", "A"), _conv("a2", "Q", "A"), _conv("b", "Q")])
    assert main(["clean-sharegpt", str(src), str(out)]) == 0
    assert "kept 1 conversations" in capsys.readouterr().out
    assert len(load(out, "sharegpt")) == 1

"""`huarizo datagen identity`: varied, multi-turn, valid ShareGPT conversations naming the model and its maker."""

from __future__ import annotations

from pathlib import Path

from huarizo.datagen.identity import identity_conversations
from huarizo.formats import load
from huarizo.formats.cli import main


def test_identity_conversations_are_varied_and_name_the_model() -> None:
    convs = identity_conversations("Huarizo-7B", "the Andes Lab", n=150, seed=1)
    assert len(convs) == 150 and len({c.id for c in convs}) == 150
    assert len({tuple(t.value for t in c.conversations) for c in convs}) == 150
    assert {len(c.conversations) // 2 for c in convs} >= {1, 2, 3}
    answers = [t.value for c in convs for t in c.conversations if t.from_ == "gpt"]
    assert sum("Huarizo-7B" in a or "the Andes Lab" in a for a in answers) >= len(answers) * 0.8
    assert len({t.value for c in convs for t in c.conversations if t.from_ == "human"}) >= 25
    assert identity_conversations("X", "Y", n=10, seed=1) == identity_conversations("X", "Y", n=10, seed=1)


def test_identity_cli(tmp_path: Path) -> None:
    out = tmp_path / "identity.json"
    assert main(["datagen", "identity", "--name", "Llamita", "--org", "Huarizo", str(out), "--count", "40"]) == 0
    convs = load(out, "sharegpt")
    assert len(convs) == 40 and any("Llamita" in t.value for t in convs[0].conversations)

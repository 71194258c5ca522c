"""Fixtures: a real server on a free loopback port serving the tiny model."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from huarizo.serve import RunningServer, ServeConfig, start_server


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """The tiny model behind `huarizo serve`'s app, no auth."""
    cfg = ServeConfig(model=str(tiny_model_dir), port=0, model_name="tiny-test", dtype="float32")
    with start_server(cfg) as running:
        yield running


@pytest.fixture(scope="session")
def keyed_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """The tiny model served with two accepted API keys."""
    cfg = ServeConfig(model=str(tiny_model_dir), port=0, api_keys=["k1", "k2"], max_batch_size=4)
    with start_server(cfg) as running:
        yield running


NEWLINE_TOKENS = ["\n", "\n\n", "\n\n\n", "  ", "    "]
"""Added (not special) tokens, as Gemma 3 has thousands of: newlines and runs of spaces."""


@pytest.fixture(scope="session")
def newline_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer has `"\\n"`, `"\\n\\n"` and runs of spaces as added tokens (like Gemma's);
    its weights are scaled up so that greedy answers vary (newlines included) instead of repeating one token."""
    import torch
    from tokenizers import AddedToken
    from transformers import LlamaConfig, LlamaForCausalLM

    from huarizo.formats.models import train_tokenizer

    folder = tmp_path_factory.mktemp("newline-model")
    tokenizer = train_tokenizer()
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in NEWLINE_TOKENS])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(5)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def newline_tokenizer(newline_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tokenizer of `newline_model_dir`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(newline_model_dir)


@pytest.fixture(scope="session")
def newline_server(newline_model_dir: Path) -> Iterator[RunningServer]:
    """`newline_model_dir` behind `huarizo serve` (float32: compared with direct forward passes to 1e-4)."""
    cfg = ServeConfig(model=str(newline_model_dir), port=0, model_name="nl", dtype="float32")
    with start_server(cfg) as running:
        yield running


# ---- the arena ------------------------------------------------------------------------------------------------------

ARENA_MODELS = ("okapi-7b", "zebra-13b")
"""The two models of the test arena (names that appear nowhere else on the pages)."""
ARENA_QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write two lines about a llama crossing the Andes."]},
    {"question_id": 2, "category": "math", "turns": ["What is 17 times 23?"]},
    {"question_id": 3, "category": "knowledge", "turns": ["Why is the sky blue?"]},
    {
        "question_id": 4,
        "category": "coding",
        "turns": ["Write a Python function that reverses a string.", "Now make it keep the spaces where they were."],
    },
    {"question_id": 5, "category": "roleplay", "turns": ["You are a guide in Cusco. Greet a visitor in one line."]},
]
ARENA_ANSWERS = {
    "okapi-7b": {
        1: ["Over the pass the llama goes,\nsure-footed where the cold wind blows."],
        2: ["17 x 23 = 391."],
        3: ["Air scatters blue light more than red (Rayleigh scattering), so the sky looks blue."],
        4: [
            "def reverse(s):\n    return s[::-1]",
            "def reverse_keep_spaces(s):\n    letters = [c for c in s if c != ' '][::-1]\n    it = iter(letters)\n"
            "    return ''.join(c if c == ' ' else next(it) for c in s)",
        ],
        5: ["Welcome to Cusco, the navel of the world! Take it slowly: we are at 3,400 metres."],
    },
    "zebra-13b": {
        1: ["A llama walks."],
        2: ["It is 391, because 17 x 20 = 340 and 17 x 3 = 51."],
        3: ['<img src=x onerror="window.__pwned=1"> Because of <b>scattering</b> & such.'],
        4: ["reversed = lambda s: ''.join(reversed(s))", "Keep a list of where the spaces are, then put them back."],
        5: ["Hello."],
    },
}


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_arena_files(folder: Path) -> dict[str, Path]:
    """A question file and the two models' answer files (MT-bench layouts), written by hand into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"questions": _jsonl(folder / "question.jsonl", list(ARENA_QUESTIONS))}
    for model, answers in ARENA_ANSWERS.items():
        rows = [{"question_id": q, "model_id": model, "choices": [{"turns": t}]} for q, t in answers.items()]
        files[model] = _jsonl(folder / f"{model}.jsonl", rows)
    return files


@pytest.fixture
def arena_files(tmp_path: Path) -> dict[str, Path]:
    """The test arena's files (`write_arena_files`)."""
    return write_arena_files(tmp_path / "arena-files")


def arena_config(model_dir: Path, files: dict[str, Path], out: Path, **kw: object) -> ServeConfig:
    """The tiny model, with the arena of `files` voting into `out`."""
    arena = {"out": str(out), "questions": str(files["questions"]), "answers": [str(files[m]) for m in ARENA_MODELS]}
    return ServeConfig(model=str(model_dir), port=0, model_name="tiny-test", dtype="float32", arena=arena, **kw)


def votes_in(out: Path) -> list[dict[str, object]]:
    """The votes recorded in an arena folder."""
    path = out / "votes.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


class Voter:
    """A person at the arena over plain HTTP: a session, a name, and the page's CSRF token."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=120)
        page = self.http.get("/arena")
        assert page.status_code == 200, page.text
        self.csrf = csrf_of(page.text)
        r = self.http.post("/arena/voter", data={"voter": name, "csrf": self.csrf}, headers={"Origin": url})
        assert r.status_code == 303, r.text

    def next(self) -> dict[str, object]:
        """What `/arena/api/next` says."""
        r = self.http.get("/arena/api/next")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def post(self, path: str, body: dict[str, object]) -> httpx.Response:
        """A page's own POST (CSRF header, same origin)."""
        return self.http.post(path, json=body, headers={"X-CSRF-Token": self.csrf, "Origin": self.url})

    def vote(self, item: object, vote: str) -> httpx.Response:
        """Vote on an item."""
        return self.post("/arena/api/vote", {"item": item, "vote": vote})

    def close(self) -> None:
        """Close the connection."""
        self.http.close()


def csrf_of(page: str) -> str:
    """The CSRF token a page carries."""
    found = re.search(r'data-csrf="([^"]+)"', page)
    assert found, page
    return found.group(1)


class ArenaKit:
    """What the arena tests share (a fixture: test modules cannot import this conftest under importlib)."""

    models = ARENA_MODELS
    questions = ARENA_QUESTIONS
    answers = ARENA_ANSWERS
    config = staticmethod(arena_config)
    write_files = staticmethod(write_arena_files)
    votes_in = staticmethod(votes_in)
    csrf_of = staticmethod(csrf_of)
    Voter = Voter


@pytest.fixture(scope="session")
def kit() -> ArenaKit:
    """The arena tests' data and helpers."""
    return ArenaKit()

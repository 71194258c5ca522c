"""Logprobs as OpenAI defines them, read through the official openai client and litellm, checked against the tiny
model's own forward pass (float32, to 1e-4)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from huarizo.formats.models import load_causal_lm
from huarizo.formats.schemas import Conversation, Message
from huarizo.serve import RunningServer

TOL = 1e-4
QUESTION = "Give three tips for staying healthy."


@pytest.fixture(scope="module")
def lm(server: RunningServer) -> tuple[Any, Any]:
    """The served model loaded a second time, on its own: the reference forward pass."""
    return load_causal_lm(server.cfg.model)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)


def _forward(lm: tuple[Any, Any], ids: list[int]) -> Any:
    """log-softmax of the model's logits at every position of `ids` (float32)."""
    import torch

    model, _ = lm
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def _greedy(lm: tuple[Any, Any], prompt: list[int], n: int) -> tuple[list[int], list[Any]]:
    """n greedy tokens decoded directly (no cache, no batching), with the log-softmax row each was chosen from."""
    ids, rows = list(prompt), []
    for _ in range(n):
        row = _forward(lm, ids)[-1]
        rows.append(row)
        ids.append(int(row.argmax()))
    return ids[len(prompt) :], rows


def _chat_ids(server: RunningServer) -> list[int]:
    return server.served.chat_prompt(Conversation(messages=[Message(role="user", content=QUESTION)]))


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_match_a_forward_pass(
    server: RunningServer, client: openai.OpenAI, lm: tuple[Any, Any], stream: bool
) -> None:
    body: dict[str, Any] = {
        "model": server.model_name,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 5,
        "extra_body": {"ignore_eos": True},
    }
    if stream:
        chunks = list(client.chat.completions.create(**body, stream=True))
        content = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        r = client.chat.completions.create(**body)
        assert r.choices[0].logprobs is not None and r.choices[0].logprobs.content is not None
        content, text = r.choices[0].logprobs.content, r.choices[0].message.content or ""
    want, rows = _greedy(lm, _chat_ids(server), 8)
    assert len(content) == 8
    assert b"".join(bytes(c.bytes or []) for c in content).decode() == text == lm[1].decode(want)
    for c, token, row in zip(content, want, rows, strict=True):
        assert abs(c.logprob - float(row[token])) < TOL
        top = [t.logprob for t in c.top_logprobs]
        assert top == sorted(top, reverse=True), "top_logprobs are not sorted"
        assert all(abs(a - float(b)) < TOL for a, b in zip(top, row.topk(5).values, strict=True))
        assert (c.top_logprobs[0].token, c.top_logprobs[0].bytes) == (c.token, c.bytes), "greedy: the top token"


def test_chat_without_logprobs_has_none_and_top_logprobs_needs_logprobs(
    server: RunningServer, client: openai.OpenAI
) -> None:
    msgs = [{"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model=server.model_name, messages=msgs, max_tokens=2)  # type: ignore[arg-type]
    assert r.choices[0].logprobs is None
    r0 = client.chat.completions.create(
        model=server.model_name,
        messages=msgs,  # type: ignore[arg-type]
        max_tokens=2,
        logprobs=True,
    )
    assert r0.choices[0].logprobs and all(c.top_logprobs == [] for c in r0.choices[0].logprobs.content or [])
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(
            model=server.model_name,
            messages=msgs,  # type: ignore[arg-type]
            max_tokens=2,
            top_logprobs=3,
        )
    bad = httpx.post(
        f"{server.base_url}/chat/completions", json={"messages": msgs, "logprobs": True, "top_logprobs": 21}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"


@pytest.mark.parametrize(
    ("echo", "stream", "as_ids"), [(False, False, False), (True, False, True), (True, True, False)]
)
def test_completion_logprobs_match_a_forward_pass(
    server: RunningServer, client: openai.OpenAI, lm: tuple[Any, Any], echo: bool, stream: bool, as_ids: bool
) -> None:
    tok = lm[1]
    text = "The capital of France is"
    ids = tok.encode(text)
    kw: dict[str, Any] = {"model": server.model_name, "max_tokens": 6, "temperature": 0, "logprobs": 3, "echo": echo}
    prompt: Any = ids if as_ids else text
    if stream:
        chunks = list(client.completions.create(prompt=prompt, stream=True, extra_body={"ignore_eos": True}, **kw))
        parts = [ch.choices[0] for ch in chunks if ch.choices]
        got_text = "".join(p.text for p in parts)
        lps = [p.logprobs for p in parts if p.logprobs]
        tokens = [t for lp in lps for t in lp.tokens or []]
        token_logprobs = [t for lp in lps for t in lp.token_logprobs or [None] * len(lp.tokens or [])]
        top = [t for lp in lps for t in lp.top_logprobs or [None] * len(lp.tokens or [])]
        offsets = [t for lp in lps for t in lp.text_offset or []]
    else:
        r = client.completions.create(prompt=prompt, extra_body={"ignore_eos": True}, **kw)
        choice = r.choices[0]
        assert choice.logprobs is not None
        got_text = choice.text
        tokens, offsets = choice.logprobs.tokens or [], choice.logprobs.text_offset or []
        token_logprobs, top = list(choice.logprobs.token_logprobs or []), list(choice.logprobs.top_logprobs or [])
    want, _ = _greedy(lm, ids, 6)
    rows = _forward(lm, ids + want)
    full = ids + want if echo else want
    assert len(tokens) == len(token_logprobs) == len(top) == len(offsets) == len(full)
    assert got_text == (text if echo else "") + tok.decode(want)
    if echo:
        assert token_logprobs[0] is None and top[0] is None, "the first prompt token has no logprob"
    start = 0 if echo else len(ids)
    for k, token in enumerate(full):
        pos = start + k
        if pos == 0:
            continue
        row = rows[pos - 1]
        assert abs(token_logprobs[k] - float(row[token])) < TOL, f"position {pos}"
        alternatives = top[k]
        assert alternatives is not None and 3 <= len(alternatives) <= 4  # the top 3 and the token itself
        assert max(alternatives.values()) == pytest.approx(float(row.max()), abs=TOL)
        if pos >= len(ids):  # generated at temperature 0: the token is the most likely
            assert tokens[k] in alternatives and alternatives[tokens[k]] == max(alternatives.values())
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_echo_with_max_tokens_zero_scores_prompts_given_as_token_ids(
    server: RunningServer, lm: tuple[Any, Any]
) -> None:
    """lm-eval's loglikelihood request: token ids, echo, logprobs=1, max_tokens 0 (or 1): every prompt token scored."""
    tok = lm[1]
    prompts = [tok.encode("Question: what colour is the sky? Answer: blue"), tok.encode("One two three four")]
    for max_tokens in (0, 1):
        body = {"model": server.model_name, "prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": max_tokens}
        r = httpx.post(f"{server.base_url}/completions", json={**body, "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        for choice, ids in zip(r.json()["choices"], prompts, strict=True):
            lps = choice["logprobs"]["token_logprobs"]
            assert len(lps) == len(ids) + max_tokens and lps[0] is None
            rows = _forward(lm, ids)
            assert all(abs(lps[k] - float(rows[k - 1][ids[k]])) < TOL for k in range(1, len(ids)))
            assert choice["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == len(prompts) * max_tokens
    r = httpx.post(f"{server.base_url}/completions", json={"prompt": "hi", "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_litellm_returns_the_logprobs(server: RunningServer) -> None:
    """What the judge reads: litellm hands chat logprobs over in OpenAI's shape."""
    import litellm

    r = litellm.completion(
        model=f"openai/{server.model_name}",
        api_base=server.base_url,
        api_key="none",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=4,
    )
    first = r.choices[0].logprobs.content[0]
    assert [t.logprob for t in first.top_logprobs] == sorted((t.logprob for t in first.top_logprobs), reverse=True)
    assert first.top_logprobs[0].token == first.token and first.top_logprobs[0].logprob == first.logprob
    assert len(first.top_logprobs) == 4

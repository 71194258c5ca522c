"""The OpenAI-compatible API, driven by the official openai client, litellm and raw HTTP against a real server."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from huarizo.formats.llm import LLMResponse
from huarizo.serve import RunningServer, ServeConfig, start_server

MSG = [{"role": "user", "content": "Give three tips for staying healthy."}]


def _client(server: RunningServer, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def _wait_idle(server: RunningServer, deadline: float = 20.0) -> None:
    stats, end = server.served.engine.stats, time.monotonic() + deadline
    while stats.running or stats.waiting:
        assert time.monotonic() < end, "the engine did not free its slots"
        time.sleep(0.02)


def test_models_and_health(server: RunningServer) -> None:
    models = _client(server).models.list()
    assert [m.id for m in models.data] == ["tiny-test"]
    assert models.data[0].model_extra == {"max_model_len": 1024, "fingerprint": server.served.fingerprint}
    assert len(server.served.fingerprint) == 16
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_a_retrained_model_is_not_answered_from_the_llm_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Huarizo's client caches answers by request; a model retrained in place and served under the same name gets a
    new fingerprint, so its answers are asked for again, not taken from the last model's."""
    from huarizo.formats.llm import LLMClient

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)

    def ask(running: RunningServer) -> LLMResponse:
        client = LLMClient("openai/tuned", api_base=running.base_url, cache_dir=tmp_path / "cache")
        return client.complete("Name a colour.", max_tokens=4, temperature=0)

    cfg = ServeConfig(model=str(folder), port=0, model_name="tuned")
    with start_server(cfg) as before:
        assert not ask(before).cached and ask(before).cached
    for weights in folder.glob("*.safetensors"):  # retraining rewrites the weights
        weights.write_bytes(weights.read_bytes())
    with start_server(cfg) as after:
        assert after.served.fingerprint != before.served.fingerprint
        assert not ask(after).cached and ask(after).cached


def test_chat_sync_client(server: RunningServer) -> None:
    r = _client(server).chat.completions.create(model="tiny-test", messages=MSG, max_tokens=7, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage and r.usage.completion_tokens == 7 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_completion_with_n_and_seed(server: RunningServer) -> None:
    c = _client(server)
    r = c.completions.create(model="tiny-test", prompt="Once upon a time", max_tokens=6, n=3, temperature=1.0, seed=5)
    again = c.completions.create(model="tiny-test", prompt="Once upon a time", max_tokens=6, n=3, temperature=1, seed=5)
    assert len(r.choices) == 3 and [ch.index for ch in r.choices] == [0, 1, 2]
    assert [ch.text for ch in r.choices] == [ch.text for ch in again.choices]
    assert len({ch.text for ch in r.choices}) > 1, "the n choices of a seeded request are all the same"
    assert r.usage and r.usage.completion_tokens == 18


def test_chat_streaming_matches_non_streaming(server: RunningServer) -> None:
    c = _client(server)
    full = c.chat.completions.create(model="tiny-test", messages=MSG, max_tokens=12, temperature=0)
    chunks = list(
        c.chat.completions.create(
            model="tiny-test",
            messages=MSG,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 12


def test_completion_streaming_sse_ends_with_done(server: RunningServer) -> None:
    body = {"model": "tiny-test", "prompt": "Hello", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(e["object"] == "text_completion" for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_async_client(server: RunningServer) -> None:
    async def main() -> list[str]:
        c = openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        rs = await asyncio.gather(
            *[
                c.chat.completions.create(
                    model="tiny-test",
                    messages=[{"role": "user", "content": f"Count to {k}"}],
                    max_tokens=8,
                    temperature=0,
                )
                for k in range(4)
            ]
        )
        await c.close()
        return [r.choices[0].message.content or "" for r in rs]

    texts = asyncio.run(main())
    assert len(texts) == 4 and all(texts)


def test_litellm(server: RunningServer) -> None:
    import litellm

    r = litellm.completion(
        model="openai/tiny-test",
        api_base=server.base_url,
        api_key="none",
        messages=MSG,
        max_tokens=6,
        temperature=0,
    )
    assert r.choices[0].message.content
    assert r.usage.completion_tokens == 6


def test_sixteen_concurrent_clients_get_their_own_complete_answers(server: RunningServer) -> None:
    c = _client(server)
    prompts = [f"Task {k}: write {'a short' if k % 2 else 'a long'} note about topic {k * 7}." for k in range(16)]
    max_tokens = [10 + k for k in range(16)]
    alone = [
        c.chat.completions.create(
            model="tiny-test", messages=[{"role": "user", "content": p}], max_tokens=m, temperature=0
        )
        for p, m in zip(prompts, max_tokens, strict=True)
    ]
    engine = server.served.engine
    steps = engine.stats.steps
    results: list[openai.types.chat.ChatCompletion | None] = [None] * 16
    go = threading.Barrier(16)

    def run(k: int) -> None:
        client = _client(server)
        go.wait()
        results[k] = client.chat.completions.create(
            model="tiny-test",
            messages=[{"role": "user", "content": prompts[k]}],
            max_tokens=max_tokens[k],
            temperature=0,
        )

    threads = [threading.Thread(target=run, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (got, want) in enumerate(zip(results, alone, strict=True)):
        assert got is not None, f"client {k} got no answer"
        assert got.choices[0].message.content == want.choices[0].message.content, f"client {k}"
        assert got.usage and want.usage and got.usage.completion_tokens == want.usage.completion_tokens
    new_steps = engine.stats.steps - steps
    assert max(engine.stats.batch_sizes[-new_steps:]) >= 8, "concurrent requests were not batched together"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"model": "tiny-test"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, "context"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "user turn"),
    ],
)
def test_invalid_chat_requests_get_400(server: RunningServer, body: dict, where: str) -> None:
    r = httpx.post(f"{server.base_url}/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and where in err["message"]


def test_invalid_bodies_get_400(server: RunningServer) -> None:
    url = f"{server.base_url}/chat/completions"
    assert httpx.post(url, content=b"{not json").status_code == 400
    assert httpx.post(url, content=b"[1, 2]").status_code == 400
    big = {"messages": [{"role": "user", "content": "x" * 2_000_000}]}
    r = httpx.post(url, json=big)
    assert r.status_code == 400 and "limit" in r.json()["error"]["message"]
    r = httpx.post(f"{server.base_url}/completions", json={"prompt": "hi", "best_of": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
    r = httpx.post(f"{server.base_url}/completions", json={"prompt": [1, 2, 10**9], "max_tokens": 2})
    assert r.status_code == 400 and "token ids" in r.json()["error"]["message"]
    ok = httpx.post(f"{server.base_url}/completions", json={"prompt": [1, 20, 30], "max_tokens": 2, "top_p": None})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    with pytest.raises(openai.BadRequestError):
        _client(server).completions.create(model="tiny-test", prompt="", max_tokens=3)


def test_api_key_required(keyed_server: RunningServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        _client(keyed_server, "wrong").models.list()
    r = httpx.post(f"{keyed_server.base_url}/chat/completions", json={"messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for key in ("k1", "k2"):
        out = _client(keyed_server, key).chat.completions.create(
            model=keyed_server.model_name, messages=MSG, max_tokens=3
        )
        assert out.usage and out.usage.completion_tokens == 3
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200


def test_stream_disconnect_frees_the_slot(server: RunningServer) -> None:
    engine = server.served.engine
    _wait_idle(server)
    before = engine.stats.completion_tokens
    body = {"prompt": "never ending", "max_tokens": 900, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    _wait_idle(server)
    assert engine.stats.completion_tokens - before < 900, "the sequence ran to the end after its client left"
    again = _client(server).completions.create(model="tiny-test", prompt="still there?", max_tokens=4)
    assert again.usage and again.usage.completion_tokens == 4


def test_non_streaming_disconnect_frees_the_slot(server: RunningServer) -> None:
    engine = server.served.engine
    _wait_idle(server)
    before = engine.stats.completion_tokens
    body = {"prompt": "never ending", "max_tokens": 900, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/completions", json=body, timeout=httpx.Timeout(5.0, read=0.3))
    _wait_idle(server)
    assert engine.stats.completion_tokens - before < 900


def test_request_stop_strings(server: RunningServer) -> None:
    c = _client(server)
    kw = {"model": "tiny-test", "max_tokens": 24, "temperature": 1.0, "seed": 11}
    text = c.completions.create(prompt="Explain the difference between weather and climate.", **kw).choices[0].text
    stop, at = next((text[i : i + 2], i) for i in range(1, len(text) - 2) if text.find(text[i : i + 2]) == i)
    r = c.completions.create(prompt="Explain the difference between weather and climate.", stop=[stop, "zzzz"], **kw)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (text[:at], "stop")


def test_metrics(server: RunningServer) -> None:
    _client(server).chat.completions.create(model="tiny-test", messages=MSG, max_tokens=2)
    text = httpx.get(f"{server.url}/metrics").text
    assert 'huarizo_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "huarizo_completion_tokens_total" in text and "huarizo_queue_depth" in text
    assert "huarizo_request_latency_seconds_bucket" in text


def test_stop_strings_are_bounded(server: RunningServer) -> None:
    """lm-eval's whole `until` list is fine; thousands of stop strings (each checked at every token) are refused."""
    url = f"{server.base_url}/completions"
    ok = httpx.post(url, json={"prompt": "Hi", "max_tokens": 2, "stop": [f"stop {k}" for k in range(100)]})
    assert ok.status_code == 200, ok.text
    for stop in ([f"s{k}" for k in range(3800)], ["x" * 5000]):
        r = httpx.post(url, json={"prompt": "Hi", "max_tokens": 2, "stop": stop})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop", r.text
        assert r.json()["error"]["message"].startswith("stop: ")


def _greedy_direct(server: RunningServer, ids: list[int], n: int, adjust: Any) -> str:
    """n greedy tokens from the served model's own forward pass, `adjust(logits, generated)` applied each step."""
    import torch

    model, tok = server.served.engine.model, server.served.tokenizer
    out: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()
        out.append(int(adjust(logits, out).argmax()))
    return str(tok.decode(out, skip_special_tokens=True))


def test_penalties_follow_openais_formula(server: RunningServer) -> None:
    """frequency and presence penalties lower the logits of generated tokens (count x f + p), also when greedy (the
    tiny model, which repeats one token, then writes others)."""
    from collections import Counter

    tok = server.served.tokenizer
    prompt = "Write a short poem about the sea."

    def penalise(logits: Any, out: list[int]) -> Any:
        for t, c in Counter(out).items():
            logits[t] -= 1.5 * c + 0.5
        return logits

    want = _greedy_direct(server, tok.encode(prompt), 16, penalise)
    plain = _greedy_direct(server, tok.encode(prompt), 16, lambda logits, out: logits)
    c = _client(server)
    kw: dict[str, Any] = {"model": "tiny-test", "prompt": prompt, "max_tokens": 16, "temperature": 0}
    r = c.completions.create(**kw, frequency_penalty=1.5, presence_penalty=0.5, extra_body={"ignore_eos": True})
    assert r.choices[0].text == want != plain


def test_logit_bias_and_top_k(newline_server: RunningServer) -> None:
    tok = newline_server.served.tokenizer
    c = _client(newline_server)
    kw: dict[str, Any] = {
        "model": "nl",
        "prompt": "Name a colour.",
        "max_tokens": 6,
        "extra_body": {"ignore_eos": True},
    }
    greedy = c.completions.create(**kw, temperature=0).choices[0].text
    first = tok.encode(greedy, add_special_tokens=False)[0]
    banned = c.completions.create(**kw, temperature=0, logit_bias={str(first): -100}).choices[0].text
    assert not banned.startswith(tok.decode([first]))
    forced = c.completions.create(**kw, temperature=0, logit_bias={"300": 100}).choices[0].text
    assert forced == tok.decode([300] * 6)
    # top_k=1 leaves one token to sample from: the greedy answer, whatever the temperature
    sampled = c.completions.create(**{**kw, "extra_body": {"ignore_eos": True, "top_k": 1}}, temperature=1.5)
    assert sampled.choices[0].text == greedy
    for bias in ({"abc": 1}, {"999999": 1}, {"5": 101}):
        r = httpx.post(f"{newline_server.base_url}/completions", json={"prompt": "x", "logit_bias": bias})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text


@pytest.mark.parametrize("stream", [False, True])
def test_newline_stop_inside_an_added_token(newline_server: RunningServer, stream: bool) -> None:
    """The issue's repro: the first token is the added token "\\n\\n" and stop=["\\n"]: the answer is "" with "stop"."""
    tok = newline_server.served.tokenizer
    nn = tok.convert_tokens_to_ids("\n\n")
    assert nn in tok.get_added_vocab().values()
    c = _client(newline_server)
    kw: dict[str, Any] = {
        "model": "nl",
        "prompt": "Question: What is the capital of France?\nAnswer:",
        "max_tokens": 12,
        "temperature": 0,
        "logit_bias": {str(nn): 30},  # the model now starts with "\n\n" (and writes more afterwards)
    }
    unstopped = c.completions.create(**kw).choices[0]
    assert unstopped.text.startswith("\n\n") and unstopped.finish_reason == "length"
    if stream:
        chunks = [ch.choices[0] for ch in c.completions.create(**kw, stop=["\n"], stream=True) if ch.choices]
        text, reason = "".join(ch.text for ch in chunks), chunks[-1].finish_reason
    else:
        r = c.completions.create(**kw, stop=["\n"])
        text, reason = r.choices[0].text, r.choices[0].finish_reason
    assert (text, reason) == ("", "stop")
    chat = c.chat.completions.create(
        model="nl",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
        stop=["\n"],
        logit_bias={str(nn): 30},
    )
    assert (chat.choices[0].message.content, chat.choices[0].finish_reason) == ("", "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_reason_says_what_ended_the_answer(newline_server: RunningServer, stream: bool, tmp_path: Path) -> None:
    """vLLM's `stop_reason`: the stop string that matched, the stop token's id, or null for end of sequence and for
    `length`; in the final streamed chunk too. Huarizo's own client reads it (`ended_by_itself`)."""
    from huarizo.formats.llm import LLMClient

    tok = newline_server.served.tokenizer
    nn, im_end, eos = tok.convert_tokens_to_ids("\n\n"), tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    c = _client(newline_server)
    base: dict[str, Any] = {"model": "nl", "prompt": "Name a colour.", "max_tokens": 12, "temperature": 0}
    cases = [  # (request, finish_reason, stop_reason)
        ({"logit_bias": {str(nn): 30}, "stop": ["zz", "\n"]}, "stop", "\n"),
        ({"logit_bias": {str(im_end): 100}, "stop": ["<|im_end|>"]}, "stop", im_end),
        ({"logit_bias": {str(eos): 100}}, "stop", None),
        ({"extra_body": {"ignore_eos": True}, "logit_bias": {str(eos): 100}}, "length", None),
    ]
    for extra, finish, stop in cases:
        if stream:
            last = [ch.choices[0] for ch in c.completions.create(**base, **extra, stream=True) if ch.choices][-1]
        else:
            last = c.completions.create(**base, **extra).choices[0]
        assert (last.finish_reason, (last.model_extra or {}).get("stop_reason", "missing")) == (finish, stop), extra
    client = LLMClient("openai/nl", api_base=newline_server.base_url, cache_dir=tmp_path / "cache", mode="completion")
    by_string = client.complete("Name a colour.", max_tokens=12, temperature=0, stop=["\n"], logit_bias={str(nn): 30})
    by_eos = client.complete("Name a colour.", max_tokens=12, temperature=0, logit_bias={str(eos): 100})
    assert (by_string.stop_reason, by_string.ended_by_itself) == ("\n", False)
    assert (by_eos.finish_reason, by_eos.stop_reason, by_eos.ended_by_itself) == ("stop", None, True)

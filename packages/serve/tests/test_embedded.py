"""End to end on the embedded default model (Gemma 3 270M base): slow, run with `-m slow`."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from huarizo.serve import RunningServer, ServeConfig, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded() -> Iterator[RunningServer]:
    with start_server(ServeConfig(model="embedded", port=0, dtype="bfloat16")) as server:
        yield server


def test_embedded_model_answers_openai_and_litellm(embedded: RunningServer) -> None:
    import litellm

    assert embedded.model_name == "embedded"
    assert embedded.served.template.name == "alpaca"  # the base model has no chat template of its own
    client = openai.OpenAI(base_url=embedded.base_url, api_key="none", max_retries=0)
    q = [{"role": "user", "content": "Name the largest planet of the solar system."}]
    r = client.chat.completions.create(model="embedded", messages=q, max_tokens=48, temperature=0)
    text = r.choices[0].message.content or ""
    assert text.strip() and "### Instruction:" not in text and "<eos>" not in text
    assert r.choices[0].finish_reason in ("stop", "length")
    streamed = client.chat.completions.create(model="embedded", messages=q, max_tokens=48, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
    out = litellm.completion(
        model="openai/embedded", api_base=embedded.base_url, api_key="none", messages=q, max_tokens=16, temperature=0
    )
    assert out.choices[0].message.content.strip()
    done = client.completions.create(model="embedded", prompt="The capital of France is", max_tokens=16, temperature=0)
    assert "France" in done.choices[0].text


def test_embedded_engine_matches_transformers_generate(embedded: RunningServer) -> None:
    import torch

    served = embedded.served
    model, tok = served.engine.model, served.tokenizer
    ids = tok.encode("Three facts about the Moon:")
    want = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=24,
        do_sample=False,
    )
    want_text = tok.decode(want[0][len(ids) :], skip_special_tokens=True)
    client = openai.OpenAI(base_url=embedded.base_url, api_key="none", max_retries=0)
    got = client.completions.create(
        model="embedded", prompt="Three facts about the Moon:", max_tokens=24, temperature=0
    )
    assert got.choices[0].text == want_text


@pytest.fixture(scope="module")
def embedded_f32() -> Iterator[RunningServer]:
    """The embedded model in float32: bfloat16 rounds differently with the batch's shape, so exactness across
    batch compositions is a float32 property."""
    with start_server(ServeConfig(model="embedded", port=0, dtype="float32", model_name="embedded")) as server:
        yield server


def test_embedded_batches_past_the_sliding_window_exactly(embedded_f32: RunningServer) -> None:
    """Gemma 3's 512-token sliding window: a long prompt and short ones batched together decode as they do alone."""
    import threading

    embedded = embedded_f32
    client = openai.OpenAI(base_url=embedded.base_url, api_key="none", max_retries=0)
    story = " ".join(f"On day {d} the traveller walked to the next village and wrote a note." for d in range(60))
    prompts = [story + "\nSummary:", "The three primary colours are", "A haiku about rain:", "def fibonacci(n):"]

    def ask(p: str) -> str:
        r = client.completions.create(model="embedded", prompt=p, max_tokens=12, temperature=0)
        return r.choices[0].text

    alone = [ask(p) for p in prompts]
    together = [""] * len(prompts)
    threads = [threading.Thread(target=lambda k=k: together.__setitem__(k, ask(prompts[k]))) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(embedded.served.tokenizer.encode(story)) > 512
    assert together == alone


def test_embedded_newline_stop_inside_gemmas_added_tokens(embedded: RunningServer) -> None:
    """The issue's repro: Gemma 3 writes "\\n\\n" (one added token) first; stop=["\\n"] answers "" with "stop"."""
    from huarizo.formats.schemas import Conversation, Message

    served = embedded.served
    tok = served.tokenizer
    question = "Question: What is the capital of France?\nAnswer:"
    conv = Conversation(messages=[Message(role="user", content=question)])
    prompt = served.template.generation_prompt(conv, eos=tok.eos_token, bos=tok.bos_token or "")
    client = openai.OpenAI(base_url=embedded.base_url, api_key="none", max_retries=0)
    free = client.completions.create(model="embedded", prompt=prompt, max_tokens=24, temperature=0, logprobs=0)
    assert free.choices[0].logprobs and (free.choices[0].logprobs.tokens or [])[0] == "\n\n"
    stopped = client.completions.create(model="embedded", prompt=prompt, max_tokens=24, temperature=0, stop=["\n"])
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == ("", "stop")
    streamed = client.completions.create(
        model="embedded", prompt=prompt, max_tokens=24, temperature=0, stop=["\n"], stream=True
    )
    parts = [c.choices[0] for c in streamed if c.choices]
    assert "".join(p.text for p in parts) == "" and parts[-1].finish_reason == "stop"


def test_embedded_echo_logprobs_match_its_forward_pass(embedded: RunningServer) -> None:
    """lm-eval's loglikelihood request on Gemma 3 (262k vocabulary: the output layer runs a slice at a time)."""
    import torch

    served = embedded.served
    model, tok = served.engine.model, served.tokenizer
    ids = tok.encode("The capital of France is Paris, and the capital of Italy is Rome.")
    client = openai.OpenAI(base_url=embedded.base_url, api_key="none", max_retries=0)
    r = client.completions.create(model="embedded", prompt=ids, max_tokens=0, echo=True, logprobs=2)
    lps = r.choices[0].logprobs
    assert lps is not None and lps.token_logprobs is not None and lps.token_logprobs[0] is None
    with torch.inference_mode():
        want = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    got = lps.token_logprobs[1:]
    assert len(got) == len(ids) - 1
    assert max(abs(g - float(want[k, ids[k + 1]])) for k, g in enumerate(got)) < 1e-3
    assert r.choices[0].text == tok.decode(ids, skip_special_tokens=True)

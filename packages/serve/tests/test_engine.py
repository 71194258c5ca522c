"""The batching engine and its stop logic, on the tiny model and its real tokenizer."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huarizo.formats.models import load_causal_lm
from huarizo.formats.schemas import Conversation, Message
from huarizo.formats.templates import get_template
from huarizo.serve import Delta, Engine, EngineError, Finished, SamplingParams, ServedModel
from huarizo.serve.engine import TextTracker, find_stop, stop_holdback
from huarizo.serve.tokens import TokenText

GREEDY = SamplingParams(max_tokens=24, temperature=0)
PROMPTS = [
    "Write a poem",
    "Hello there, how are you",
    "x",
    "The quick brown fox jumps over the lazy dog. Explain the difference between weather and climate.",
    "Sort the numbers from smallest to largest: 3, 1, 2.",
    "def add(a, b): return a + b",
    "Generate a list of ideas for a birthday party.",
    "Rewrite the text in a formal tone.",
]


@pytest.fixture(scope="module")
def lm(tiny_model_dir: Path) -> tuple[Any, Any]:
    return load_causal_lm(tiny_model_dir)


@pytest.fixture(scope="module")
def engine(lm: tuple[Any, Any]) -> Iterator[Engine]:
    eng = Engine(*lm, max_batch_size=8)
    yield eng
    eng.close()


def test_stop_helpers() -> None:
    assert stop_holdback("the end ###", ["### Instruction:"]) == 3
    assert stop_holdback("the end #", ["### Instruction:", "#x"]) == 1
    assert stop_holdback("the end", ["### Instruction:"]) == 0
    assert stop_holdback("a\n\n#", ["\n\n### x", "#"]) == 3
    assert stop_holdback("ab ###", ["###"], start=5) == 1  # only the unsent tail counts
    assert find_stop("ab USER: cd ### x", ["###", "USER:"]) == 3
    assert find_stop("abc", ["x"]) == -1


def test_tracker_cuts_at_a_stop_string_spread_over_tokens(tiny_tokenizer: Any) -> None:
    text = "Sort the numbers. ### Instruction: more text"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 6  # the stop string spans several tokens of the real tokenizer
    tracker = TextTracker(tiny_tokenizer, tiny_tokenizer.encode("prompt"), ["### Instruction:"])
    sent = []
    for token in ids:
        sent.append(tracker.add(token))
        assert "#" not in "".join(sent), "a possible stop-string prefix was sent before it was decided"
        if tracker.stopped:
            break
    assert tracker.stopped
    assert "".join(sent) + tracker.flush() == "Sort the numbers. "


def _run_tracker(tokenizer: Any, text: str, stops: list[str]) -> tuple[list[str], TextTracker]:
    tracker = TextTracker(tokenizer, tokenizer.encode("Answer:"), stops)
    sent = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        sent.append(tracker.add(token))
        if tracker.stopped:
            break
    sent.append(tracker.flush())
    return sent, tracker


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("Paris\n\nThe capital", ["\n"], "Paris"),  # "\n" inside the added token "\n\n"
        ("\n\nThe capital of France is Paris.", ["\n"], ""),  # the repro: the first token is "\n\n"
        ("a   b\n\n\nc", ["\n\n"], "a   b"),  # inside "\n\n\n"
        ("The    capital", ["  "], "The"),  # a run of spaces inside the added token "    "
        ("Paris.\n\n### Response:", ["\n###"], "Paris.\n"),  # a stop across added and ordinary tokens
    ],
)
def test_stop_strings_match_inside_added_tokens(
    newline_tokenizer: Any, text: str, stops: list[str], expected: str
) -> None:
    """Gemma-like tokenizers carry newlines and space runs as added tokens: a stop string still stops on its text."""
    ids = newline_tokenizer.encode(text, add_special_tokens=False)
    assert set(ids) & set(newline_tokenizer.get_added_vocab().values()), "the text has no added token"
    sent, tracker = _run_tracker(newline_tokenizer, text, stops)
    assert tracker.stopped and "".join(sent) == expected


def test_stop_prefixes_are_held_back_not_lost(newline_tokenizer: Any) -> None:
    """A newline that might start `"\\n###"` waits for the next token; text that turns out not to be a stop is sent."""
    tok = newline_tokenizer
    tracker = TextTracker(tok, tok.encode("Answer:"), ["\n###"])
    steps = [
        (tok.convert_ids_to_tokens(t), tracker.add(t))
        for t in tok.encode("One\nTwo\n\nThree", add_special_tokens=False)
    ]
    assert ("\n", "") in steps, "the newline token was sent before the next token decided it"
    assert "".join(piece for _, piece in steps) + tracker.flush() == "One\nTwo\n\nThree" and not tracker.stopped


def test_stop_strings_split_into_text_and_special_ids(newline_model_dir: Path) -> None:
    """Every stop string is matched on text; the special ones (never in decoded text) also stop by id."""
    model, tokenizer = load_causal_lm(newline_model_dir)
    engine = Engine(model, tokenizer, max_batch_size=1)
    try:
        served = ServedModel(engine, tokenizer, get_template("chatml"), "t")
        params = served.params(chat=False, stop=["\n", "\n\n", "<|im_end|>", "###"])
        assert params.stop == ("\n", "\n\n", "<|im_end|>", "###")
        assert params.stop_token_ids == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
        chat = served.params(chat=True)
        assert tokenizer.eos_token_id in chat.stop_token_ids and tokenizer.eos_token in chat.stop
    finally:
        engine.close()


def test_tracker_never_sends_half_a_character(tiny_tokenizer: Any) -> None:
    text = "héllo wörld 😀 ok"
    tracker = TextTracker(tiny_tokenizer, tiny_tokenizer.encode("say"), [])
    parts = [tracker.add(t) for t in tiny_tokenizer.encode(text, add_special_tokens=False)]
    assert all("\ufffd" not in p for p in parts)
    assert "".join(parts) + tracker.flush() == text


def test_concurrent_greedy_equals_single_requests(engine: Engine, tiny_tokenizer: Any) -> None:
    ids = [tiny_tokenizer.encode(p) for p in PROMPTS]
    alone = [engine.generate(i, GREEDY) for i in ids]
    results: list[Finished | None] = [None] * len(ids)
    go = threading.Barrier(len(ids))

    def run(k: int) -> None:
        go.wait()
        results[k] = engine.generate(ids[k], GREEDY)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.text for r in results if r] == [a.text for a in alone]
    assert all(r and r.completion_tokens == a.completion_tokens for r, a in zip(results, alone, strict=True))
    assert max(engine.stats.batch_sizes) > 1, "concurrent requests were not batched"


def test_greedy_equals_transformers_generate(engine: Engine, lm: tuple[Any, Any]) -> None:
    import torch

    model, tok = lm
    for prompt in PROMPTS[:3]:
        ids = tok.encode(prompt)
        want = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
        )
        got = engine.generate(ids, SamplingParams(max_tokens=16, temperature=0))
        assert got.text == tok.decode(want[0][len(ids) :], skip_special_tokens=True)


def test_requests_join_a_running_batch(engine: Engine, tiny_tokenizer: Any) -> None:
    """A request arriving mid-generation joins the running batch (continuous batching) and still decodes exactly."""
    short, long_ = tiny_tokenizer.encode(PROMPTS[4]), tiny_tokenizer.encode(PROMPTS[3])
    expected = engine.generate(short, GREEDY).text
    long_params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    stream = engine.stream(long_, long_params)
    first = next(ev for ev in stream if isinstance(ev, Delta))
    assert first.text
    steps_before = engine.stats.steps
    joined = engine.generate(short, GREEDY)  # submitted while the long sequence is decoding
    assert joined.text == expected
    rest = [ev for ev in stream if isinstance(ev, Finished)]
    assert rest and rest[0].completion_tokens == 200
    window = engine.stats.batch_sizes[-(engine.stats.steps - steps_before) :]
    assert 2 in window, "the second request was not decoded in the same batch as the first"


def test_cancel_frees_the_slot(engine: Engine, tiny_tokenizer: Any) -> None:
    params = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)
    stream = engine.stream(tiny_tokenizer.encode("cancel me"), params)
    assert isinstance(next(stream), Delta)
    stream.close()  # cancels
    done = engine.generate(tiny_tokenizer.encode("next"), GREEDY)  # the engine keeps serving
    assert done.reason in ("stop", "length")


def test_sampling_is_reproducible_with_a_seed(engine: Engine, tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode(PROMPTS[0])
    p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=123)
    a, b = engine.generate(ids, p), engine.generate(ids, p)
    assert a.text == b.text and a.completion_tokens == 16
    others = {engine.generate(ids, dataclasses.replace(p, seed=s)).text for s in range(4)}
    assert len(others) > 1


def test_prompt_beyond_the_context_is_refused(engine: Engine) -> None:
    with pytest.raises(EngineError, match="context"):
        engine.submit([5] * 1000, SamplingParams(max_tokens=100), lambda ev: None)


def test_stop_token_id_ends_a_sequence(engine: Engine, tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode(PROMPTS[0])
    first = tiny_tokenizer.encode(engine.generate(ids, GREEDY).text, add_special_tokens=False)[0]
    out = engine.generate(ids, dataclasses.replace(GREEDY, stop_token_ids=(first,)))
    assert (out.reason, out.text, out.completion_tokens) == ("stop", "", 1)


def _stop_inside(text: str) -> tuple[str, int] | None:
    """A two-character stop string first found at index i > 0 of `text`."""
    for i in range(1, len(text) - 2):
        if text.find(text[i : i + 2]) == i and text[i : i + 2].strip():
            return text[i : i + 2], i
    return None


def test_template_stop_strings_end_chat_answers(lm: tuple[Any, Any]) -> None:
    """The stop strings come from the template: a template whose turn end appears in the answer cuts it there.

    (A seeded sample: the tiny random model's greedy answers repeat one token.)
    """
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_batch_size=2)
    try:
        base = get_template("vicuna_v1.1")
        found = None
        for prompt in PROMPTS:
            served = ServedModel(engine, tokenizer, base, "t")
            ids = served.chat_prompt(Conversation(messages=[Message(role="user", content=prompt)]))
            text = engine.generate(ids, served.params(chat=True, max_tokens=24, temperature=1.0, seed=7)).text
            found = _stop_inside(text)
            if found:
                break
        assert found, "no greedy answer with a usable stop string"
        stop, at = found
        served = ServedModel(engine, tokenizer, dataclasses.replace(base, extra_stop=(stop,)), "t")
        out = engine.generate(ids, served.params(chat=True, max_tokens=24, temperature=1.0, seed=7))
        assert (out.reason, out.text) == ("stop", text[:at])
    finally:
        engine.close()


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None)
@given(
    text=st.text(alphabet="ab #:\n é", max_size=40),
    stops=st.lists(st.text(alphabet="ab #:\n ", min_size=1, max_size=4), max_size=3),
    newline=st.booleans(),
)
def test_tracker_output_is_the_text_cut_at_the_first_stop(
    tiny_tokenizer: Any, newline_tokenizer: Any, text: str, stops: list[str], newline: bool
) -> None:
    """Sent text + flush == the text at the first token where a stop string shows up, cut at that stop (with the
    plain tokenizer and with one whose newlines and space runs are added tokens)."""
    tok = newline_tokenizer if newline else tiny_tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    expected, stopped = text, False
    for k in range(1, len(ids) + 1):
        seen = tok.decode(ids[:k])
        if find_stop(seen, stops) >= 0:
            expected, stopped = seen[: find_stop(seen, stops)], True
            break
    tracker = TextTracker(tok, tok.encode("p"), stops)
    sent = ""
    for token in ids:
        piece = tracker.add(token)
        sent += piece
        if tracker.stopped:
            break
        assert expected.startswith(sent), "text was sent that a stop string later cut off"
    assert sent + tracker.flush() == expected
    assert tracker.stopped == stopped


@pytest.fixture(scope="module")
def sliding_lm(tiny_tokenizer: Any) -> tuple[Any, Any]:
    """A tiny random Gemma 3 with a sliding window of 8 tokens on every other layer (like the embedded model's)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"] * 2,
        max_position_embeddings=512,
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        bos_token_id=tiny_tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the init, so greedy answers vary instead of repeating one token
        for p in model.parameters():
            p.mul_(4.0)
    return model, tiny_tokenizer


def test_sliding_window_model_batches_exactly(sliding_lm: tuple[Any, Any]) -> None:
    """Joining and trimming a hybrid sliding-window cache gives the same greedy answers as decoding alone."""
    import torch

    model, tok = sliding_lm
    engine = Engine(model, tok, max_batch_size=8)
    try:
        ids = [tok.encode(p) for p in PROMPTS]
        params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
        alone = [engine.generate(i, params).text for i in ids]
        want = model.generate(
            torch.tensor([ids[3]]),
            attention_mask=torch.ones(1, len(ids[3]), dtype=torch.long),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
        )
        assert alone[3] == tok.decode(want[0][len(ids[3]) :], skip_special_tokens=True)
        results: list[str] = [""] * len(ids)

        def run(k: int) -> None:
            params_k = dataclasses.replace(params, max_tokens=20 - k)
            results[k] = engine.generate(ids[k], params_k).text

        long_params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
        long_alone = engine.generate(ids[3], long_params).text
        steps = engine.stats.steps
        long_stream = engine.stream(ids[3], long_params)
        next(long_stream)  # a sequence already past the window is decoding when the others arrive
        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(ids))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        long_done = [ev for ev in long_stream if isinstance(ev, Finished)]
        assert long_done[-1].text == long_alone
        assert engine.stats.steps - steps < 60 + 15, "the requests waited for the long one instead of joining it"
        for k in range(len(ids)):
            single = engine.generate(ids[k], dataclasses.replace(params, max_tokens=20 - k)).text
            assert results[k] == single, f"prompt {k}"
        assert len(set(alone)) > 3 and max(engine.stats.batch_sizes) > 2
    finally:
        engine.close()


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None)
@given(text=st.lists(st.sampled_from([*"ab \n#é😀ß\t", "<|im_end|>", "\n\n", "    "]), max_size=20).map("".join))
def test_token_bytes_rebuild_the_decoded_text(tiny_tokenizer: Any, newline_tokenizer: Any, text: str) -> None:
    """Logprobs' `bytes` of each token, joined, are exactly the decoded text (half characters included)."""
    for tok in (tiny_tokenizer, newline_tokenizer):
        tt = TokenText(tok)
        ids = tok.encode(text)
        assert b"".join(tt.text_bytes(i) for i in ids) == tok.decode(ids, skip_special_tokens=True).encode()
        assert all(tt.string(i) == tt.token_bytes(i).decode() for i in ids if "\ufffd" not in tok.decode([i]))

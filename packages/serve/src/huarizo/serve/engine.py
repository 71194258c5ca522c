"""The batching engine: one scheduler thread runs every request's tokens through shared forward passes.

Continuous batching on a Hugging Face causal LM with its KV cache, in a page:

- New requests wait in a queue. Between decode steps the scheduler prefills them together (left padded, one
  forward pass) and joins their KV cache to the running batch: both caches are left padded to a common length and
  concatenated on the batch axis; the 2D attention mask hides the padding and explicit position ids keep each
  sequence's positions its own.
- Every step feeds each running sequence its last token ([B, 1]), samples each row with its own settings
  (greedy, temperature, top-p, seed) and hands the new text to the request's sink, holding back text that may be
  the start of a stop string.
- A sequence leaves the batch when it hits EOS, a stop string, its `max_tokens`, or is cancelled (a client gone);
  its rows are dropped from the cache and padding no sequence needs any more is trimmed.
- Logprobs come from the same forward passes: the log-softmax of the logits each step samples from, and, for a
  request that wants its prompt's logprobs (`echo`), the output layer applied to every prompt position of the
  prefill's last hidden states, a slice of positions at a time so that a long prompt never holds all its logits.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from huarizo.formats import HuarizoError


class EngineError(HuarizoError):
    """A request the engine cannot serve (too long for the context, engine closed)."""


class EngineBusy(EngineError):
    """The waiting queue is full: the request was not queued; try again later."""


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated. `temperature == 0` is greedy decoding; `max_tokens == 0` only reads the
    prompt (for its logprobs). `logit_bias` adds to chosen tokens' logits; `presence_penalty` and
    `frequency_penalty` lower the logits of tokens already generated (once, and per occurrence), as OpenAI defines
    them; `top_k` (0: off) keeps the k most likely tokens. `logprobs=k` reports each generated token's logprob and
    the k most likely tokens at its position (0: the token's alone); `prompt_logprobs=k` does the same for the
    prompt's tokens. Logprobs are those of the model's distribution, before temperature, top-k, top-p, penalties and
    logit bias."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A token, its logprob, and the most likely tokens at its position (`(token, logprob)`, most likely first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


PromptLogprobs = tuple[TokenLogprob | None, ...]
"""One entry per prompt token; the first is None (nothing predicts it)."""


@dataclass(frozen=True)
class Delta:
    """New text of a sequence (`tokens` tokens were generated since the previous event), with the logprobs of those
    tokens when asked for; a sequence that wants its prompt's logprobs first gets a Delta holding only them."""

    text: str
    tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: PromptLogprobs | None = None


@dataclass(frozen=True)
class Finished:
    """A sequence is done: why (`stop`, `length`, `cancelled`, `error`), its full text and token counts, the
    logprobs of every generated token (the one that ended it included) and of the prompt when asked for, and what
    stopped a `stop` (vLLM's `stop_reason`: the stop string, the stop token's id, None for end of sequence)."""

    reason: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: PromptLogprobs | None = None
    stop_reason: str | int | None = None


Event = Delta | Finished
Sink = Callable[[Event], None]


def stop_holdback(text: str, stops: Sequence[str], start: int = 0) -> int:
    """How many trailing characters of `text[start:]` could be the start of a stop string (so must not be sent yet)."""
    best = 0
    for s in stops:
        first = len(text) - min(len(s) - 1, len(text) - start)
        j = text.find(s[0], first) if s else -1
        while j != -1 and len(text) - j > best:
            if s.startswith(text[j:]):  # the leftmost match is the longest suffix for this stop
                best = len(text) - j
                break
            j = text.find(s[0], j + 1)
    return best


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop string in `text[start:]` (as an index into `text`), or -1."""
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


class TextTracker:
    """Turns a growing list of token ids into safe text deltas, applying stop strings to the decoded text.

    Stop strings are matched on the text, whatever tokens carry it: a stop `"\\n"` ends the answer inside a token
    `"\\n\\n"` or `"Paris.\\n"` too. Decoding is incremental (each token decodes a window that starts a few
    tokens back, so tokenizers that drop a leading space at the start of a decode still give the right text); an
    incomplete UTF-8 character waits for the token that completes it, and the text that could still become a stop
    string is held back until the next token decides it.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.ids = list(prompt_ids[-4:])  # a little context: the first generated token decodes as inside the text
        self.prefix_offset, self.read_offset = 0, len(self.ids)
        self.text = ""
        self.sent = 0
        self.stop: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def _extend(self, final: bool) -> None:
        """Append the text decoded since the last complete character; apply the stops to it."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return  # nothing new yet, or half a character: the next token completes it
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        start = max(self.sent, len(self.text) - self.longest + 1)
        self.text += full[len(prefix) :]
        hit = find_stop(self.text, self.stops, start)
        if hit >= 0:
            self.stop = next(s for s in self.stops if self.text.find(s, start) == hit)
            self.text = self.text[:hit]

    @property
    def stopped(self) -> bool:
        """Whether a stop string was found (`stop` says which)."""
        return self.stop is not None

    def add(self, token_id: int) -> str:
        """Append a token; returns the text that is now safe to send (sets `stop` on a stop string)."""
        self.ids.append(token_id)
        self._extend(final=False)
        if self.stopped:
            return self.flush()
        safe = len(self.text) - stop_holdback(self.text, self.stops, self.sent)
        out = self.text[self.sent : max(safe, self.sent)]
        self.sent += len(out)
        return out

    def flush(self) -> str:
        """Everything not sent yet, an incomplete last character included (at the end of a sequence)."""
        if not self.stopped and self.read_offset < len(self.ids):
            self._extend(final=True)
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


@dataclass
class _Seq:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    tracker: TextTracker
    generator: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    last_token: int = -1
    generated: int = 0
    unsent_tokens: int = 0
    done: bool = False
    counts: dict[int, int] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: PromptLogprobs | None = None
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + self.generated


class RequestHandle:
    """A submitted sequence: `cancel()` frees its slot at the next step."""

    def __init__(self, seq: _Seq) -> None:
        self._seq = seq

    def cancel(self) -> None:
        """Stop generating (the sink gets `Finished('cancelled', ...)`)."""
        self._seq.cancelled.set()


@dataclass
class EngineStats:
    """Live counters for /metrics (`waiting` is the queue's length, `running` the batch's size)."""

    waiting: int = 0
    running: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class Engine:
    """Continuous batching over a causal LM on one device. Thread-safe: `submit` from any thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 16,
        max_model_len: int | None = None,
        max_waiting: int | None = None,
    ) -> None:
        import torch

        self.torch = torch
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        cfg = getattr(model.config, "get_text_config", lambda: model.config)()
        ctx = getattr(cfg, "max_position_embeddings", None) or 2048
        self.max_model_len = min(max_model_len or ctx, ctx)
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        # Joining and trimming caches is done for full-attention and sliding-window layers; a model whose cache has
        # other kinds of layers is batched in waves instead (new requests wait until the running batch drains).
        kinds = {type(layer) for layer in DynamicCache(config=model.config).layers}
        self.can_join = kinds <= {DynamicLayer, DynamicSlidingWindowLayer}
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if tokenizer.eos_token_id is not None:
            eos_ids.append(tokenizer.eos_token_id)
        self.eos_ids = {int(i) for i in eos_ids}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renamed it
        self.vocab_size = int(model.get_output_embeddings().out_features)
        self.prompt_logprobs_supported = self._head_matches()
        self.stats = EngineStats()
        self._queue: queue.Queue[_Seq | None] = queue.Queue()
        self._admit = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="huarizo-engine", daemon=True)
        self._thread.start()

    # ---- public API ---------------------------------------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Sink) -> RequestHandle:
        """Queue a sequence; `sink` gets its `Delta`s and one `Finished`, called from the engine thread."""
        return self.submit_many([(prompt_ids, params, sink)])[0]

    def submit_many(self, items: Sequence[tuple[Sequence[int], SamplingParams, Sink]]) -> list[RequestHandle]:
        """Queue several sequences, all or none: `EngineBusy` when they would take the waiting queue past
        `max_waiting`, `EngineError` when one of them cannot be served."""
        if self._closed:
            raise EngineError("the engine is closed")
        seqs = [self._new_seq(ids, params, sink) for ids, params, sink in items]
        with self._admit:
            waiting = self._queue.qsize()
            if self.max_waiting is not None and waiting + len(seqs) > self.max_waiting:
                raise EngineBusy(
                    f"the server is busy: {waiting} sequences are waiting for a batch slot and this request adds "
                    f"{len(seqs)} (at most {self.max_waiting} may wait); retry later"
                )
            for seq in seqs:
                self._queue.put(seq)
        self.stats.waiting = self._queue.qsize()
        return [RequestHandle(seq) for seq in seqs]

    def _new_seq(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Sink) -> _Seq:
        if not prompt_ids:
            raise EngineError("the prompt is empty")
        if params.prompt_logprobs is not None and not self.prompt_logprobs_supported:
            raise EngineError("prompt logprobs (echo) are not supported for this model's output layer")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise EngineError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's context "
                f"of {self.max_model_len} tokens"
            )
        gen = self.torch.Generator(device="cpu")
        gen.manual_seed(params.seed if params.seed is not None else int(self.torch.seed()) % (2**63))
        return _Seq(list(prompt_ids), params, sink, TextTracker(self.tokenizer, prompt_ids, params.stop), gen)

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generator[Event, None, None]:
        """Generate synchronously, yielding events as they come; closing the iterator cancels the sequence."""
        events: queue.Queue[Event] = queue.Queue()
        handle = self.submit(prompt_ids, params, events.put)
        try:
            while True:
                ev = events.get()
                yield ev
                if isinstance(ev, Finished):
                    return
        finally:
            handle.cancel()

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Finished:
        """Generate synchronously and return the finished sequence."""
        for ev in self.stream(prompt_ids, params):
            if isinstance(ev, Finished):
                return ev
        raise EngineError("the engine stopped without finishing the sequence")  # pragma: no cover

    def close(self) -> None:
        """Stop the scheduler thread (running sequences finish as `cancelled`)."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _head_matches(self) -> bool:
        """Whether the decoder's hidden states through `_head` give the model's own logits (prompt logprobs need it;
        true for Llama, Gemma and the like, checked rather than assumed)."""
        torch = self.torch
        ids = torch.arange(1, 5, device=self.device)[None] % self.vocab_size
        try:
            with torch.inference_mode():
                want = self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()
                hidden = self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
                got = self._head(hidden[:, -1:]).float()[:, -1]
        except Exception:  # a model without get_decoder or last_hidden_state
            return False
        return bool(torch.allclose(got, want, rtol=1e-3, atol=1e-3))

    def _head(self, hidden: Any) -> Any:
        """Logits from the decoder's last hidden states, as the model's forward computes them."""
        logits = self.model.get_output_embeddings()(hidden)
        text_config = getattr(self.model.config, "get_text_config", lambda: self.model.config)()
        cap = getattr(text_config, "final_logit_softcapping", None)
        return logits if not cap else self.torch.tanh(logits / cap) * cap

    # ---- the scheduler ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        running: list[_Seq] = []
        cache: Any = None
        mask: Any = None
        while True:
            block = not running
            incoming: list[_Seq] = []
            stop = False
            while len(running) + len(incoming) < self.max_batch_size:
                try:
                    item = self._queue.get(block=block and not incoming)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                self.stats.waiting = self._queue.qsize()
                if item.cancelled.is_set():
                    self._finish(item, "cancelled")
                    continue
                incoming.append(item)
            self.stats.running = len(running) + len(incoming)
            if stop:
                for seq in running + incoming:
                    self._finish(seq, "cancelled")
                return
            try:
                if incoming and running and not self.can_join:
                    for seq in incoming:  # this cache cannot be joined: retry once the batch has drained
                        self._queue.put(seq)
                    incoming = []
                if incoming:
                    new_cache, new_mask = self._prefill(incoming)
                    if running:
                        cache, mask = self._join(cache, mask, new_cache, new_mask)
                    else:
                        cache, mask = new_cache, new_mask
                    running += incoming
                    incoming = []
                running, cache, mask = self._evict(running, cache, mask)
                if running:
                    cache, mask = self._decode(running, cache, mask)
                    running, cache, mask = self._evict(running, cache, mask)
            except Exception as exc:  # a failed step fails its sequences, never the server
                for seq in running + incoming:
                    self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")
                running, cache, mask = [], None, None
            self.stats.running = len(running)
            self.stats.waiting = self._queue.qsize()

    def _prefill(self, seqs: list[_Seq]) -> tuple[Any, Any]:
        torch = self.torch
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids) :] = 1
            self.stats.prompt_tokens += len(s.prompt_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        inputs = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "use_cache": True,
            self._cache_kw: cache,
        }
        with torch.inference_mode():
            if any(s.params.prompt_logprobs is not None for s in seqs):
                # every prompt position's hidden state; the output layer runs on them a slice at a time
                hidden = self.model.get_decoder()(**inputs).last_hidden_state
                last = self._head(hidden[:, -1, :])
                for i, s in enumerate(seqs):
                    if s.params.prompt_logprobs is not None:
                        rows = hidden[i, width - len(s.prompt_ids) : width - 1]
                        s.prompt_logprobs = self._prompt_logprobs(rows, s.prompt_ids[1:], s.params.prompt_logprobs)
                        s.sink(Delta("", 0, prompt_logprobs=s.prompt_logprobs))
            else:
                last = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        rows = [i for i, s in enumerate(seqs) if s.params.max_tokens > 0]
        for s in seqs:
            if s.params.max_tokens == 0:
                self._finish(s, "length")
        if rows:
            self._sample([seqs[i] for i in rows], last[rows])
        return cache, mask.to(self.device)

    def _prompt_logprobs(self, hidden: Any, targets: list[int], k: int) -> PromptLogprobs:
        """Logprobs of `targets[j]` (and the top k) from the hidden state of the position before it."""
        torch = self.torch
        out: list[TokenLogprob | None] = [None]
        step = max(1, 2**24 // self.vocab_size)  # at most ~64 MB of float32 logits at a time
        with torch.inference_mode():
            for a in range(0, len(targets), step):
                lp = torch.log_softmax(self._head(hidden[a : a + step]).float(), -1)
                chunk = targets[a : a + step]
                chosen = lp.gather(1, torch.tensor(chunk, device=lp.device)[:, None])[:, 0].tolist()
                top = _topk(lp, k)
                out += [TokenLogprob(t, c, top[j]) for j, (t, c) in enumerate(zip(chunk, chosen, strict=True))]
        return tuple(out)

    def _decode(self, seqs: list[_Seq], cache: Any, mask: Any) -> tuple[Any, Any]:
        torch = self.torch
        ids = torch.tensor([[s.last_token] for s in seqs], device=self.device)
        positions = torch.tensor([[s.length - 1] for s in seqs], device=self.device)
        mask = torch.cat([mask, mask.new_ones((len(seqs), 1))], dim=1)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{self._cache_kw: cache}
            )
        self.stats.steps += 1
        self.stats.batch_sizes.append(len(seqs))
        del self.stats.batch_sizes[:-1000]
        self._sample(seqs, out.logits[:, -1, :])
        return cache, mask

    def _sample(self, seqs: list[_Seq], logits: Any) -> None:
        torch = self.torch
        logits = logits.float()
        greedy = logits.argmax(-1).tolist()
        tokens = []
        for i, s in enumerate(seqs):
            p = s.params
            adjusted = self._adjust(logits[i], s)
            row = logits[i] if adjusted is None else adjusted
            if p.temperature > 0:
                if 0 < p.top_k < row.shape[-1]:
                    row = row.masked_fill(row < row.topk(p.top_k).values[-1], float("-inf"))
                probs = torch.softmax(row / p.temperature, -1)
                if p.top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    keep = sorted_p.cumsum(-1) - sorted_p < p.top_p
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                tokens.append(int(torch.multinomial(probs.cpu(), 1, generator=s.generator)))
            else:
                tokens.append(greedy[i] if adjusted is None else int(row.argmax()))
        logprobs: list[TokenLogprob | None] = [None] * len(seqs)
        want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        if want:  # one log-softmax and one top-k for the rows that asked
            lp = torch.log_softmax(logits[want], -1)
            chosen = lp.gather(1, torch.tensor([[tokens[i]] for i in want], device=lp.device))[:, 0].tolist()
            top = _topk(lp, max(seqs[i].params.logprobs or 0 for i in want))
            for j, i in enumerate(want):
                k = seqs[i].params.logprobs or 0
                logprobs[i] = TokenLogprob(tokens[i], chosen[j], top[j][:k])
        for s, token, logprob in zip(seqs, tokens, logprobs, strict=True):
            self._accept(s, token, logprob)

    def _adjust(self, row: Any, s: _Seq) -> Any:
        """The row of logits with the sequence's logit bias and penalties applied; None when it has none."""
        p, torch = s.params, self.torch
        penalised = bool(s.counts) and bool(p.presence_penalty or p.frequency_penalty)
        if not p.logit_bias and not penalised:
            return None
        if p.logit_bias:
            ids, bias = zip(*p.logit_bias, strict=True)
            row = row.index_add(0, torch.tensor(ids, device=row.device), torch.tensor(bias, device=row.device))
        if penalised:
            ids = torch.tensor(list(s.counts), device=row.device)
            counts = torch.tensor(list(s.counts.values()), dtype=row.dtype, device=row.device)
            row = row.index_add(0, ids, -(p.frequency_penalty * counts + p.presence_penalty))
        return row

    def _accept(self, s: _Seq, token: int, logprob: TokenLogprob | None) -> None:
        s.last_token = token
        s.generated += 1
        if s.params.presence_penalty or s.params.frequency_penalty:
            s.counts[token] = s.counts.get(token, 0) + 1
        self.stats.completion_tokens += 1
        if logprob is not None:
            s.logprobs.append(logprob)
            s.unsent_logprobs.append(logprob)
        if token in self.eos_ids and not s.params.ignore_eos:
            self._finish(s, "stop", s.tracker.flush())
            return
        if token in s.params.stop_token_ids:
            self._finish(s, "stop", s.tracker.flush(), stop_reason=token)
            return
        s.unsent_tokens += 1
        text = s.tracker.add(token)
        if s.tracker.stop is not None:
            self._finish(s, "stop", text, stop_reason=s.tracker.stop)
        elif s.generated >= s.params.max_tokens:
            self._finish(s, "length", text + s.tracker.flush())
        elif text:
            s.sink(Delta(text, s.unsent_tokens, tuple(s.unsent_logprobs)))
            s.unsent_tokens = 0
            s.unsent_logprobs.clear()

    def _finish(
        self, s: _Seq, reason: str, last: str = "", error: str | None = None, stop_reason: str | int | None = None
    ) -> None:
        if s.done:
            return
        s.done = True
        if reason != "cancelled" and (last or s.unsent_logprobs):
            s.sink(Delta(last, s.unsent_tokens, tuple(s.unsent_logprobs)))
        lps = tuple(s.logprobs)
        prompt_lps = s.prompt_logprobs
        s.sink(Finished(reason, s.tracker.text, len(s.prompt_ids), s.generated, error, lps, prompt_lps, stop_reason))

    def _evict(self, running: list[_Seq], cache: Any, mask: Any) -> tuple[list[_Seq], Any, Any]:
        for s in running:
            if s.cancelled.is_set():
                self._finish(s, "cancelled")
        keep = [i for i, s in enumerate(running) if not s.done]
        if len(keep) == len(running):
            return running, cache, mask
        if not keep:
            return [], None, None
        idx = self.torch.tensor(keep, device=self.device)
        mask = mask[idx]
        start = int((mask.sum(0) > 0).nonzero()[0])  # leading columns no sequence uses any more
        trim = start if self.can_join else 0
        width = mask.shape[1] - trim
        for layer in cache.layers:
            # a full layer holds every column of the mask; a sliding one the last min(width, window - 1) of them
            n = min(width, layer.keys.shape[2])
            layer.keys, layer.values = layer.keys[idx, :, -n:], layer.values[idx, :, -n:]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = width
        return [running[i] for i in keep], cache, mask[:, trim:]

    def _join(self, cache: Any, mask: Any, new_cache: Any, new_mask: Any) -> tuple[Any, Any]:
        torch = self.torch
        width = max(mask.shape[1], new_mask.shape[1])

        def pad(t: Any, n: int) -> Any:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[2] = n
            return torch.cat([t.new_zeros(shape), t], dim=2)

        for old, new in zip(cache.layers, new_cache.layers, strict=True):
            # full layers: pad both to the common width; sliding layers keep at most window - 1 columns
            n = width if not getattr(old, "is_sliding", False) else min(width, old.sliding_window - 1)
            a, b = n - old.keys.shape[2], n - new.keys.shape[2]
            old.keys = torch.cat([pad(old.keys, a), pad(new.keys, b)], dim=0)
            old.values = torch.cat([pad(old.values, a), pad(new.values, b)], dim=0)
            if hasattr(old, "cumulative_length"):
                old.cumulative_length = width
        a, b = width - mask.shape[1], width - new_mask.shape[1]
        mask = torch.cat([torch.nn.functional.pad(mask, (a, 0)), torch.nn.functional.pad(new_mask, (b, 0))], dim=0)
        return cache, mask


def _topk(logprobs: Any, k: int) -> list[tuple[tuple[int, float], ...]]:
    """The k most likely `(token, logprob)` of each row, most likely first."""
    if k <= 0:
        return [()] * logprobs.shape[0]
    values, index = logprobs.topk(min(k, logprobs.shape[-1]), -1)
    return [tuple(zip(i, v, strict=True)) for i, v in zip(index.tolist(), values.tolist(), strict=True)]

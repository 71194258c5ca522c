"""`huarizo datagen run`: Self-Instruct and Alpaca-style generation with any litellm teacher.

A run is a folder: `records.jsonl` (kept Alpaca records with provenance), `rejects.jsonl` (every task the teacher
wrote that was dropped, with a reason), `rounds.jsonl` (one line per finished round: counts, tokens, cost),
`config.yaml`, and `cache/` (every teacher reply, by request hash).

Work goes in rounds. A round's prompts depend only on the run's seed, the round number and the records kept in the
rounds before it, and its results are processed in request order, so replaying a round gives the same records. A
round's records are appended first and its `rounds.jsonl` line last; on start, records of a round without that line
(a run killed mid-round, even by kill -9) are cut away and the round is replayed, its replies coming from the cache.
A round in which a request failed for good (after all its retries) is not committed either: the run stops with
`RoundFailed` naming the failed requests, and the rerun replays the round, retrying only those. Nothing is lost,
nothing is duplicated, no reply is paid for twice, and the records equal those of a run that met no fault.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from huarizo.datagen import prompts
from huarizo.datagen.config import DatagenConfig
from huarizo.datagen.filters import RecordFilter
from huarizo.formats import (
    AlpacaRecord,
    HuarizoError,
    JsonlAppender,
    ProgressBar,
    SeedTask,
    StageResult,
    load,
    write_json_atomic,
    write_records,
)
from huarizo.formats.llm import LLMClient, LLMError, LLMResponse, request_hash

# Keys that may change between a run and its resumption (they do not change which records come out).
_RESUMABLE_KEYS = {"num_records", "max_rounds", "progress", "output_dir"}
_TEACHER_RESUMABLE = {"api_base", "api_key_env", "concurrency", "max_retries", "request_timeout", "cache_dir"}

ProgressCallback = Callable[[int, int, str], None]
"""Called as `(records kept, records wanted, a line of detail)` whenever a request ends or a round is committed."""


def default_seeds() -> Path:
    """The seed tasks shipped with huarizo-datagen."""
    return Path(str(files("huarizo.datagen") / "data" / "seeds.jsonl"))


def load_seeds(path: Path | None) -> list[SeedTask]:
    """Seed tasks from a file (validated as `SeedTask`s)."""
    seeds = load(path or default_seeds(), "seed-tasks")
    if not seeds:
        raise HuarizoError(f"{path}: no seed tasks")
    return seeds


class FailedRequest(BaseModel):
    """A teacher request that failed for good (after its retries) in a round that was therefore not committed."""

    round: int
    stage: str = Field(description="alpaca-batch, instructions, classify or instances")
    prompt_id: str
    request_hash: str = Field(description="the request's cache key")
    error: str


class DatagenResult(StageResult):
    """What a generation run produced, over all its rounds (including earlier runs it resumed).

    `counts` holds `generated` (every task the teacher wrote: kept + rejected), `kept`, `rejected`, `rounds`,
    `requests`, `cached`, `retries` and `failed`; `reasons` the rejected tasks per reason (the data funnel).
    `cost` is None when some replies had no known price (e.g. a local teacher).
    """

    output_dir: Path
    kept: int = 0
    rejected: int = 0
    generated: int = 0
    rounds: int = 0
    requests: int = Field(default=0, description="requests sent to the teacher (cache hits not included)")
    cached: int = Field(default=0, description="requests answered from the reply cache")
    retries: int = 0
    failed: int = Field(default=0, description="requests that failed for good in the round that stopped the run")
    reasons: dict[str, int] = Field(default_factory=dict, description="rejected tasks per reason")
    failed_requests: list[FailedRequest] = Field(default_factory=list)

    @property
    def records_path(self) -> Path:
        """The kept Alpaca records."""
        return self.output_dir / "records.jsonl"


class RoundFailed(HuarizoError):
    """Some teacher requests of a round failed after all their retries: the round was not committed, and rerunning
    the same config retries them (`result` holds what the run had done, `result.failed_requests` the failures)."""

    def __init__(self, message: str, result: DatagenResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class _Call:
    stage: str
    prompt_id: str
    request_hash: str
    response: LLMResponse | None
    error: str = ""


class _Proposed(NamedTuple):
    """An instruction the teacher proposed, and the call that proposed it."""

    text: str
    call: _Call


class _Classified(NamedTuple):
    """A proposed instruction and whether it is a classification task (the calls that said so)."""

    text: str
    proposed_by: _Call
    classified_by: _Call
    is_classification: bool


@dataclass
class _Outcome:
    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    requested: int = 0
    failed: list[_Call] = field(default_factory=list)


class _Generator:
    def __init__(self, cfg: DatagenConfig, client: LLMClient, seeds: list[SeedTask], on_request: Callable[[], None]):
        self.cfg, self.client, self.seeds, self.on_request = cfg, client, seeds, on_request
        self.chat = cfg.teacher.mode == "chat"
        self.filter = RecordFilter(cfg.filter, [s.instruction for s in seeds])
        self.machine: list[str] = []  # instructions of kept records, in order (Self-Instruct's machine examples)
        self._machine_set: set[str] = set()
        self.prefetched: dict[int, tuple[list[list[SeedTask]], asyncio.Future[list[_Call]]]] = {}

    @property
    def params(self) -> dict[str, Any]:
        t = self.cfg.teacher
        return {"temperature": t.temperature, "top_p": t.top_p, "max_tokens": t.max_tokens}

    def restore(self, record: dict[str, Any]) -> None:
        ins = record["instruction"]
        if ins not in self._machine_set:
            self._machine_set.add(ins)
            self.machine.append(ins)

    async def ask(self, stage: str, prompt_id: str, prompt: prompts.Prompt, **params: Any) -> _Call:
        content: Any = prompt.text if not self.chat else [{"role": "user", "content": prompt.text}]
        params = {**self.params, "stop": prompt.stop, **params}
        h = request_hash(self.client.model, self.client.payload(content, **params))
        try:
            resp, error = await self.client.acomplete(content, **params), ""
        except LLMError as exc:
            resp, error = None, str(exc)
        self.on_request()
        return _Call(stage, prompt_id, h, resp, error)

    def provenance(self, rnd: int, calls: list[_Call]) -> dict[str, Any]:
        last = calls[-1]
        return {
            "pipeline": self.cfg.pipeline,
            "round": rnd,
            "teacher": self.cfg.teacher.model,
            "mode": self.cfg.teacher.mode,
            "params": self.params,
            "stage": last.stage,
            "prompt_id": last.prompt_id,
            "request_hash": last.request_hash,
            "steps": [{"stage": c.stage, "prompt_id": c.prompt_id, "request_hash": c.request_hash} for c in calls],
        }

    def _parse(self, call: _Call, parse: Callable[..., prompts.Parsed[Any]]) -> prompts.Parsed[Any]:
        """What a call's reply parses into (`parse(text, truncated=, chat=)`)."""
        r = call.response
        assert r is not None  # failed calls stop the round before their replies are parsed
        return parse(r.text, truncated=r.finish_reason == "length", chat=self.chat)

    def _drop(self, rnd: int, calls: list[_Call], drop: prompts.Drop, instruction: str = "") -> dict[str, Any]:
        """A rejects line for a task the teacher wrote that cannot be used."""
        return {
            "instruction": drop.instruction or instruction,
            "input": drop.input,
            "output": drop.output,
            "reason": drop.reason,
            "detail": drop.detail,
            "provenance": self.provenance(rnd, calls),
        }

    def _over(
        self, rnd: int, calls: list[_Call], items: list[tuple[str, str, str]], limit: int, what: str
    ) -> list[dict[str, Any]]:
        """Rejects lines for the (instruction, input, output) items of a reply beyond the number asked for."""
        return [
            self._drop(rnd, calls, prompts.Drop("over-limit", *item, f"{what} beyond the {limit} asked for"))
            for item in items[limit:]
        ]

    # -- Alpaca --------------------------------------------------------------------------------------------------
    def _alpaca_requests(self, rnd: int) -> tuple[list[list[SeedTask]], asyncio.Future[list[_Call]]]:
        a = self.cfg.alpaca
        rng = random.Random(f"{self.cfg.seed}:{rnd}")
        plans = [
            rng.sample(self.seeds, min(a.seed_examples, len(self.seeds))) for _ in range(self.cfg.requests_per_round)
        ]
        batches = [prompts.alpaca_batch_prompt(ex, a.tasks_per_request, self.chat) for ex in plans]
        return plans, asyncio.gather(*(self.ask("alpaca-batch", prompts.ALPACA_BATCH, p) for p in batches))

    async def alpaca_round(self, rnd: int, prefetch: bool = False) -> _Outcome:
        # An Alpaca round's prompts depend only on the seed and the round number, so the next round's requests can
        # be in flight while this one is parsed and filtered (`prefetch`, skipped near the end of a run).
        plans, pending = self.prefetched.pop(rnd) if rnd in self.prefetched else self._alpaca_requests(rnd)
        if prefetch and rnd + 1 < self.cfg.max_rounds:
            self.prefetched[rnd + 1] = self._alpaca_requests(rnd + 1)
        calls = await pending
        out = _Outcome(requested=len(calls), failed=[c for c in calls if c.response is None])
        if out.failed:
            return out
        candidates: list[dict[str, Any]] = []
        for examples, call in zip(plans, calls, strict=True):
            parsed = self._parse(call, partial(prompts.parse_alpaca_batch, first=len(examples) + 1))
            out.rejected += [self._drop(rnd, [call], d) for d in parsed.dropped]
            prov = self.provenance(rnd, [call])
            candidates += [
                {"instruction": t.instruction, "input": t.input, "output": t.output, "provenance": prov}
                for t in parsed.items
            ]
        result = self.filter.filter(candidates)
        out.kept = result.kept
        out.rejected += [rej.to_json() for rej in result.rejected]
        return out

    # -- Self-Instruct -------------------------------------------------------------------------------------------
    async def self_instruct_round(self, rnd: int, rng: random.Random) -> _Outcome:
        """Self-Instruct's three stages: propose instructions, classify them, make their instances; a stage with a
        failed request ends the round."""
        out = _Outcome()
        proposed = await self._propose(out, rnd, rng)
        if out.failed:
            return out
        classified = await self._classify(out, proposed, rng)
        if out.failed:
            return out
        candidates = await self._make_instances(out, rnd, classified, rng)
        if out.failed:
            return out
        # Instructions passed the ROUGE-L check when proposed; instance checks (empty, duplicate, conflict) run here.
        result = self.filter.filter(candidates)
        out.kept, out.rejected = result.kept, out.rejected + [rej.to_json() for rej in result.rejected]
        return out

    async def _propose(self, out: _Outcome, rnd: int, rng: random.Random) -> list[_Proposed]:
        """New instructions from prompts showing human (seed) and machine (generated) examples; those too close to
        the pool (ROUGE-L) or beyond the number asked for are rejected."""
        si = self.cfg.self_instruct
        plans = []
        for _ in range(self.cfg.requests_per_round):
            n_machine = min(si.machine_examples, len(self.machine))
            ex = rng.sample(
                [s.instruction for s in self.seeds],
                min(si.human_examples + si.machine_examples - n_machine, len(self.seeds)),
            )
            ex += rng.sample(self.machine, n_machine)
            rng.shuffle(ex)
            plans.append(ex)
        n = si.instructions_per_request
        asks = [
            ("instructions", prompts.SI_INSTRUCTIONS, prompts.instructions_prompt(ex, n, self.chat)) for ex in plans
        ]
        calls = await self._stage(out, asks)
        if out.failed:
            return []
        new: list[_Proposed] = []
        for ex, call in zip(plans, calls, strict=True):
            parsed = self._parse(call, partial(prompts.parse_instructions, first=len(ex) + 1))
            out.rejected += [self._drop(rnd, [call], d) for d in parsed.dropped]
            out.rejected += self._over(rnd, [call], [(t, "", "") for t in parsed.items], n, "instructions")
            new += [_Proposed(t, call) for t in parsed.items[:n]]
        survivors = []
        for proposed, rej in zip(new, self.filter.filter_instructions([p.text for p in new]), strict=True):
            if rej is None:
                survivors.append(proposed)
            else:
                row = {**rej.to_json(), "input": "", "output": "", "provenance": self.provenance(rnd, [proposed.call])}
                out.rejected.append(row)
        return survivors

    async def _classify(self, out: _Outcome, proposed: list[_Proposed], rng: random.Random) -> list[_Classified]:
        """Whether each instruction is a classification task (which decides how its instances are asked for)."""
        examples = self._classify_examples(rng)
        asks = [
            ("classify", prompts.SI_CLASSIFY, prompts.classify_prompt(examples, p.text, self.chat)) for p in proposed
        ]
        calls = await self._stage(out, asks, max_tokens=3, temperature=0.0)
        return [
            _Classified(p.text, p.call, c, c.response is not None and prompts.parse_classify(c.response.text) is True)
            for p, c in zip(proposed, calls, strict=True)
        ]

    async def _make_instances(
        self, out: _Outcome, rnd: int, classified: list[_Classified], rng: random.Random
    ) -> list[dict[str, Any]]:
        """Input/output instances of each instruction (output first for classification tasks): the candidates."""
        n = self.cfg.self_instruct.max_instances
        asks = [
            (
                "instances",
                prompts.SI_OUTPUT_FIRST if c.is_classification else prompts.SI_INPUT_FIRST,
                prompts.instances_prompt(
                    self._instance_examples(rng, c.is_classification), c.text, c.is_classification, n, self.chat
                ),
            )
            for c in classified
        ]
        inst_calls = await self._stage(out, asks)
        if out.failed:
            return []
        candidates = []
        for c, inst_call in zip(classified, inst_calls, strict=True):
            calls = [c.proposed_by, c.classified_by, inst_call]
            parsed = self._parse(inst_call, partial(prompts.parse_instances, output_first=c.is_classification))
            out.rejected += [self._drop(rnd, calls, d, instruction=c.text) for d in parsed.dropped]
            out.rejected += self._over(rnd, calls, [(c.text, *p) for p in parsed.items], n, "instances")
            prov = {**self.provenance(rnd, calls), "is_classification": c.is_classification}
            candidates += [
                {"instruction": c.text, "input": i, "output": o, "provenance": prov} for i, o in parsed.items[:n]
            ]
        return candidates

    async def _stage(self, out: _Outcome, asks: list[tuple[str, str, prompts.Prompt]], **params: Any) -> list[_Call]:
        """Send one stage's requests together; failed ones are noted in `out`."""
        calls = await asyncio.gather(*(self.ask(stage, pid, prompt, **params) for stage, pid, prompt in asks))
        out.requested += len(calls)
        out.failed += [c for c in calls if c.response is None]
        return calls

    def _classify_examples(self, rng: random.Random) -> list[SeedTask]:
        k = self.cfg.self_instruct.classify_examples
        yes = [s for s in self.seeds if s.is_classification]
        no = [s for s in self.seeds if not s.is_classification]
        picked = rng.sample(yes, min(len(yes), k // 2)) + rng.sample(no, min(len(no), k - min(len(yes), k // 2)))
        rng.shuffle(picked)
        return picked

    def _instance_examples(self, rng: random.Random, classification: bool) -> list[SeedTask]:
        pool = [s for s in self.seeds if s.is_classification == classification] or self.seeds
        return rng.sample(pool, min(len(pool), self.cfg.self_instruct.instance_examples))


def _fingerprint(cfg: DatagenConfig, seeds_path: Path) -> dict[str, Any]:
    data = cfg.model_dump(mode="json", exclude=_RESUMABLE_KEYS)
    data["teacher"] = {k: v for k, v in data["teacher"].items() if k not in _TEACHER_RESUMABLE}
    data["seeds"] = hashlib.sha256(seeds_path.read_bytes()).hexdigest()
    data["prompts"] = list(prompts.PROMPT_IDS)
    return data


def _committed(path: Path, rounds: set[int]) -> list[dict[str, Any]]:
    """Records of finished rounds; the file is rewritten atomically without the others (a killed round)."""
    if not path.exists():
        return []
    with JsonlAppender(path) as app:  # cuts a line half-written by a kill
        rows = app.existing()
    keep = [r for r in rows if r.get("provenance", {}).get("round") in rounds]
    if len(keep) != len(rows):
        write_records(path, keep)
    return keep


def run(cfg: DatagenConfig, *, on_progress: ProgressCallback | None = None) -> DatagenResult:
    """Generate (or resume generating) until `num_records` records are kept or `max_rounds` rounds are done.

    Raises `RoundFailed` (a `HuarizoError`) when some teacher requests of a round failed after all their retries:
    the rounds before it stay committed, and rerunning the same config replays that round, retrying only those
    requests. `on_progress` is called as `(kept, num_records, detail)` while the run goes on.
    """
    start = time.monotonic()
    out_dir = cfg.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds_path = cfg.seeds or default_seeds()
    seeds = load_seeds(seeds_path)
    fp_path = out_dir / "fingerprint.json"
    fingerprint = _fingerprint(cfg, seeds_path)
    if fp_path.exists() and json.loads(fp_path.read_text()) != fingerprint:
        raise HuarizoError(
            f"{out_dir}: holds a run made with different settings (teacher, sampling, pipeline, filter, seeds or "
            "prompts); use another output_dir to start a new run"
        )
    with JsonlAppender(out_dir / "rounds.jsonl") as journal:
        done = journal.existing()
    rounds = {j["round"] for j in done if j["round"] is not None}
    next_round = max(rounds, default=-1) + 1
    kept_rows = _committed(out_dir / "records.jsonl", rounds)
    _committed(out_dir / "rejects.jsonl", rounds)
    if len(kept_rows) >= cfg.num_records or next_round >= cfg.max_rounds:  # finished: no teacher needed
        return _summary(out_dir, done, [], time.monotonic() - start)
    client = cfg.teacher.client(cfg.teacher.mode, cache_dir=str(out_dir / "cache"))
    write_json_atomic(fp_path, fingerprint)
    (out_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    journal = JsonlAppender(out_dir / "rounds.jsonl")

    progress = _Progress(cfg, done, len(kept_rows), on_progress)
    gen = _Generator(cfg, client, seeds, progress.request_done)
    for line in done:  # the ROUGE-L pool exactly as the finished rounds left it
        for ins in line.get("pool", []):
            gen.filter.add_to_pool(ins)
    for rec in kept_rows:
        gen.restore(rec)
    try:
        failed = asyncio.run(_rounds(cfg, gen, client, done, len(kept_rows), next_round, journal, progress))
    finally:
        journal.close()
        progress.close()
    result = _summary(out_dir, done, failed, time.monotonic() - start)
    if failed:
        raise RoundFailed(_failure_message(cfg, failed, done[-1]["requested"]), result)
    return result


async def _rounds(
    cfg: DatagenConfig,
    gen: _Generator,
    client: LLMClient,
    done: list[dict[str, Any]],
    kept_total: int,
    rnd: int,
    journal: JsonlAppender,
    progress: _Progress,
) -> list[FailedRequest]:
    """Run rounds until done; the failed requests of the round that stopped the run (empty when none)."""
    out_dir = cfg.output_dir
    failed: list[FailedRequest] = []
    with JsonlAppender(out_dir / "records.jsonl") as records, JsonlAppender(out_dir / "rejects.jsonl") as rejects:
        while kept_total < cfg.num_records and rnd < cfg.max_rounds:
            before = _usage_snapshot(client)
            pool_before = len(gen.filter.added)
            if cfg.pipeline == "alpaca":
                rounds_done = sum(d["round"] is not None for d in done)
                per_round = kept_total / rounds_done if rounds_done else cfg.num_records
                outcome = await gen.alpaca_round(rnd, prefetch=kept_total + 2 * per_round < cfg.num_records)
            else:
                outcome = await gen.self_instruct_round(rnd, random.Random(f"{cfg.seed}:{rnd}"))
            if outcome.failed:  # not committed: the rerun replays this round and retries what failed
                await _drain(gen)
                failed, line = _failed_round(rnd, outcome, _usage_delta(before, _usage_snapshot(client)))
                journal.append([line])
                done.append(line)
                break
            kept, rejected = _split_surplus(outcome, cfg.num_records - kept_total, cfg.num_records)
            records.append(kept)
            rejects.append(rejected)
            for rec in kept:
                gen.restore(rec)
            kept_total += len(kept)
            line = {
                "round": rnd,
                "kept": len(kept),
                "rejected": len(rejected),
                **_usage_delta(before, _usage_snapshot(client)),
                "pool": gen.filter.added[pool_before:],
            }
            journal.append([line])  # the round's commit point
            done.append(line)
            progress.round_done(line)
            rnd += 1
    if gen.prefetched:  # requests sent ahead for a round that was not needed: their replies stay in the cache
        before = _usage_snapshot(client)
        await _drain(gen)
        line = {"round": None, "prefetched": True, **_usage_delta(before, _usage_snapshot(client))}
        journal.append([line])
        done.append(line)
    await client.aclose()
    return failed


def _failed_round(rnd: int, outcome: _Outcome, usage: dict[str, Any]) -> tuple[list[FailedRequest], dict[str, Any]]:
    """The failed requests of a round that is not committed, and its `rounds.jsonl` line (`round: null`)."""
    failed = [
        FailedRequest(round=rnd, stage=c.stage, prompt_id=c.prompt_id, request_hash=c.request_hash, error=c.error)
        for c in outcome.failed
    ]
    line = {
        "round": None,
        "incomplete": rnd,
        "requested": outcome.requested,
        "failed": len(failed),
        **usage,
        "failed_requests": [f.model_dump() for f in failed],
    }
    return failed, line


def _split_surplus(outcome: _Outcome, room: int, wanted: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, rejected) of a round: records the filter kept beyond the `room` left are rejected as surplus."""
    accepted = [AlpacaRecord.model_validate(r).to_json() for r in outcome.kept]
    surplus = [
        {**r, "reason": "surplus", "detail": f"kept by the filter beyond num_records={wanted}"} for r in accepted[room:]
    ]
    return accepted[:room], outcome.rejected + surplus


async def _drain(gen: _Generator) -> None:
    """Wait for the requests sent ahead (their replies are cached, so nothing paid for is lost)."""
    for _, pending in gen.prefetched.values():
        await pending
    gen.prefetched.clear()


def _failure_message(cfg: DatagenConfig, failed: list[FailedRequest], requested: int) -> str:
    f = failed[0]
    error = " ".join(f.error.split())
    error = error if len(error) <= 200 else error[:200] + "..."
    which = ", ".join(f"{r.stage} {r.request_hash[:12]}" for r in failed[:5])
    which += f" and {len(failed) - 5} more" if len(failed) > 5 else ""
    what = (
        f"every request to {cfg.teacher.model} failed"
        if len(failed) >= requested
        else f"{len(failed)} of {requested} requests to {cfg.teacher.model} failed"
    )
    return (
        f"round {f.round}: {what} for good ({which}; first error: {error}); the round "
        "was not committed and nothing is lost: rerun the same command to retry them (replies so far are cached)"
    )


def _usage_snapshot(client: LLMClient) -> dict[str, Any]:
    u = client.usage
    return {
        "requests": u.requests,
        "cached": u.cached,
        "retries": u.retries,
        "failures": u.failures,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cost": u.cost,
        "unpriced": u.unpriced,
    }


def _usage_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: b[k] - a[k] for k in a}


def _summary(out_dir: Path, done: list[dict[str, Any]], failed: list[FailedRequest], seconds: float) -> DatagenResult:
    reasons: dict[str, int] = {}
    rej_path = out_dir / "rejects.jsonl"
    if rej_path.exists():
        for line in rej_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                reason = json.loads(line).get("reason", "?")
                reasons[reason] = reasons.get(reason, 0) + 1
    keys = ("kept", "rejected", "requests", "cached", "retries", "prompt_tokens", "completion_tokens", "unpriced")
    total = {k: sum(d.get(k, 0) for d in done) for k in keys}
    counts = {
        "generated": total["kept"] + total["rejected"],
        "kept": total["kept"],
        "rejected": total["rejected"],
        "rounds": sum(d["round"] is not None for d in done),
        "requests": total["requests"],
        "cached": total["cached"],
        "retries": total["retries"],
        "failed": len(failed),
    }
    names = {"records": "records.jsonl", "rejects": "rejects.jsonl", "rounds": "rounds.jsonl", "config": "config.yaml"}
    return DatagenResult(
        outputs={k: out_dir / v for k, v in names.items()},
        counts=counts,
        prompt_tokens=total["prompt_tokens"],
        completion_tokens=total["completion_tokens"],
        cost=None if total["unpriced"] else float(sum(d.get("cost", 0.0) for d in done)),
        seconds=seconds,
        output_dir=out_dir,
        kept=counts["kept"],
        rejected=counts["rejected"],
        generated=counts["generated"],
        rounds=counts["rounds"],
        requests=counts["requests"],
        cached=counts["cached"],
        retries=counts["retries"],
        failed=counts["failed"],
        reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        failed_requests=failed,
    )


class _Progress:
    """Progress of a run: a rich bar (`progress: true`) and/or the caller's `on_progress`."""

    def __init__(
        self, cfg: DatagenConfig, done: list[dict[str, Any]], kept: int, callback: ProgressCallback | None
    ) -> None:
        self.target, self.kept, self.callback = cfg.num_records, kept, callback
        self.rejected = sum(d.get("rejected", 0) for d in done)
        self.cost = sum(d.get("cost", 0.0) for d in done)
        self.requests = 0
        self.bar = ProgressBar(
            "datagen", cfg.num_records, enabled=cfg.progress, completed=kept, unit="records", info=self._info()
        )

    def _info(self) -> str:
        return f"kept {self.kept}  rejected {self.rejected}  requests {self.requests}  cost ${self.cost:.4f}"

    def request_done(self) -> None:
        self.requests += 1
        self._show()

    def round_done(self, line: dict[str, Any]) -> None:
        self.kept += line["kept"]
        self.rejected += line["rejected"]
        self.cost += line["cost"]
        self._show()

    def _show(self) -> None:
        self.bar.update(completed=self.kept, info=self._info())
        if self.callback is not None:
            self.callback(self.kept, self.target, self._info())

    def close(self) -> None:
        self.bar.close()

"""`huarizo datagen run`: Self-Instruct and Alpaca-style generation with any litellm teacher.

A run is a folder: `records.jsonl` (kept Alpaca records with provenance), `rejects.jsonl` (dropped ones with a
reason), `rounds.jsonl` (one line per finished round: counts, tokens, cost), `config.yaml`, and `cache/` (every
teacher reply, by request hash).

Work goes in rounds. A round's prompts depend only on the run's seed, the round number and the records kept in the
rounds before it, and its results are processed in request order, so replaying a round gives the same records. A
round's records are appended first and its `rounds.jsonl` line last; on start, records of a round without that line
(a run killed mid-round, even by kill -9) are cut away and the round is replayed, its replies coming from the cache.
Nothing is lost, nothing is duplicated, and no reply is paid for twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field

from huarizo.datagen import prompts as P
from huarizo.datagen.filters import FilterConfig, RecordFilter
from huarizo.formats import AlpacaRecord, HuarizoConfig, HuarizoError, JsonlAppender, SeedTask, load, write_records
from huarizo.formats.llm import LLMClient, LLMError, LLMResponse


class TeacherConfig(HuarizoConfig):
    """The teacher: any litellm model string. The default is the embedded base model behind `huarizo serve`."""

    model: str = "openai/embedded"
    api_base: str | None = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = Field(default=None, description="name of the environment variable holding the API key")
    mode: Literal["chat", "completion"] = "completion"
    concurrency: int = Field(default=8, ge=1)
    max_retries: int = Field(default=5, ge=0)
    timeout: float = Field(default=120.0, gt=0)
    backoff_base: float = Field(default=0.5, ge=0)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=1536, ge=1, description="reply limit for generation requests")


class AlpacaConfig(HuarizoConfig):
    """Alpaca's simplification: one request, a batch of whole tasks."""

    tasks_per_request: int = Field(default=20, ge=1)
    seed_examples: int = Field(default=3, ge=1)


class SelfInstructConfig(HuarizoConfig):
    """The Self-Instruct bootstrap."""

    human_examples: int = Field(default=6, ge=0)
    machine_examples: int = Field(default=2, ge=0)
    instructions_per_request: int = Field(default=8, ge=1)
    classify_examples: int = Field(default=12, ge=2)
    instance_examples: int = Field(default=3, ge=1)
    max_instances: int = Field(default=3, ge=1)


class DatagenConfig(HuarizoConfig):
    """One generation run (`huarizo datagen run CONFIG.yaml`)."""

    pipeline: Literal["alpaca", "self-instruct"] = "alpaca"
    output_dir: Path = Path("runs/datagen")
    seeds: Path | None = Field(
        default=None, description="seed tasks file (default: the 60 shipped with huarizo-datagen)"
    )
    num_records: int = Field(default=100, ge=1, description="stop once this many records are kept")
    max_rounds: int = Field(default=1000, ge=1)
    requests_per_round: int = Field(default=8, ge=1, description="generation requests sent together in one round")
    seed: int = 0
    cache_dir: Path | None = Field(default=None, description="reply cache (default: OUTPUT_DIR/cache)")
    progress: bool = True
    teacher: TeacherConfig = Field(default_factory=lambda: TeacherConfig())
    alpaca: AlpacaConfig = Field(default_factory=lambda: AlpacaConfig())
    self_instruct: SelfInstructConfig = Field(default_factory=lambda: SelfInstructConfig())
    filter: FilterConfig = Field(default_factory=lambda: FilterConfig())


# Keys that may change between a run and its resumption (they do not change which records come out).
_RESUMABLE_KEYS = {"num_records", "max_rounds", "progress", "cache_dir", "output_dir"}
_TEACHER_RESUMABLE = {"api_base", "api_key_env", "concurrency", "max_retries", "timeout", "backoff_base"}
T = TypeVar("T")


def default_seeds() -> Path:
    """The seed tasks shipped with huarizo-datagen."""
    return Path(str(files("huarizo.datagen") / "data" / "seeds.jsonl"))


def load_seeds(path: Path | None) -> list[SeedTask]:
    """Seed tasks from a file (validated as `SeedTask`s)."""
    seeds = load(path or default_seeds(), "seed-tasks")
    if not seeds:
        raise HuarizoError(f"{path}: no seed tasks")
    return seeds


@dataclass
class RunResult:
    """What a run produced (all rounds, including earlier runs it resumed)."""

    output_dir: Path
    kept: int
    rejected: int
    rounds: int
    requests: int
    cached: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def records_path(self) -> Path:
        """The kept Alpaca records."""
        return self.output_dir / "records.jsonl"


@dataclass
class _Call:
    stage: str
    prompt_id: str
    response: LLMResponse | None
    error: str = ""


@dataclass
class _Outcome:
    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    requested: int = 0
    failed: int = 0
    error: str = ""


class _Generator:
    def __init__(self, cfg: DatagenConfig, client: LLMClient, seeds: list[SeedTask], on_update: Callable[[], None]):
        self.cfg, self.client, self.seeds, self.on_update = cfg, client, seeds, on_update
        self.chat = cfg.teacher.mode == "chat"
        self.filter = RecordFilter(cfg.filter, [s.instruction for s in seeds])
        self.machine: list[str] = []  # instructions of kept records, in order (Self-Instruct's machine examples)
        self._machine_set: set[str] = set()
        self._prefetched: dict[int, tuple[list[list[SeedTask]], asyncio.Future[list[_Call]]]] = {}

    @property
    def params(self) -> dict[str, Any]:
        t = self.cfg.teacher
        return {"temperature": t.temperature, "top_p": t.top_p, "max_tokens": t.max_tokens}

    def restore(self, record: dict[str, Any]) -> None:
        ins = record["instruction"]
        if ins not in self._machine_set:
            self._machine_set.add(ins)
            self.machine.append(ins)

    async def ask(self, stage: str, prompt_id: str, prompt: str, **params: Any) -> _Call:
        content: Any = prompt if not self.chat else [{"role": "user", "content": prompt}]
        try:
            resp, error = await self.client.acomplete(content, **{**self.params, **params}), ""
        except LLMError as exc:
            resp, error = None, str(exc)
        self.on_update()
        return _Call(stage, prompt_id, resp, error)

    def provenance(self, rnd: int, calls: list[_Call], params: dict[str, Any]) -> dict[str, Any]:
        last = calls[-1]
        if last.response is None:
            raise ValueError("provenance of a failed call")
        return {
            "pipeline": self.cfg.pipeline,
            "round": rnd,
            "teacher": self.cfg.teacher.model,
            "mode": self.cfg.teacher.mode,
            "params": params,
            "stage": last.stage,
            "prompt_id": last.prompt_id,
            "request_hash": last.response.request_hash,
            "steps": [
                {"stage": c.stage, "prompt_id": c.prompt_id, "request_hash": c.response.request_hash}
                for c in calls
                if c.response is not None
            ],
        }

    # -- Alpaca --------------------------------------------------------------------------------------------------
    def _alpaca_requests(self, rnd: int) -> tuple[list[list[SeedTask]], asyncio.Future[list[_Call]]]:
        a = self.cfg.alpaca
        rng = random.Random(f"{self.cfg.seed}:{rnd}")
        plans = [
            rng.sample(self.seeds, min(a.seed_examples, len(self.seeds))) for _ in range(self.cfg.requests_per_round)
        ]
        prompts = [P.alpaca_batch_prompt(ex, a.tasks_per_request, self.chat) for ex in plans]
        return plans, asyncio.gather(*(self.ask("alpaca-batch", P.ALPACA_BATCH, p) for p in prompts))

    async def alpaca_round(self, rnd: int, prefetch: bool = False) -> _Outcome:
        # An Alpaca round's prompts depend only on the seed and the round number, so the next round's requests can
        # be in flight while this one is parsed and filtered (`prefetch`, skipped near the end of a run).
        plans, pending = self._prefetched.pop(rnd) if rnd in self._prefetched else self._alpaca_requests(rnd)
        if prefetch and rnd + 1 < self.cfg.max_rounds:
            self._prefetched[rnd + 1] = self._alpaca_requests(rnd + 1)
        calls = await pending
        out = _Outcome(requested=len(calls))
        candidates: list[dict[str, Any]] = []
        for examples, call in zip(plans, calls, strict=True):
            tasks = self._parse(rnd, out, [call], partial(P.parse_alpaca_batch, first=len(examples) + 1))
            if tasks is None:
                continue
            prov = self.provenance(rnd, [call], self.params)
            candidates += [
                {"instruction": t.instruction, "input": t.input, "output": t.output, "provenance": prov} for t in tasks
            ]
        result = self.filter.filter(candidates)
        out.kept = result.kept
        out.rejected += [rej.to_json() for rej in result.rejected]
        return out

    def _parse(
        self, rnd: int, out: _Outcome, calls: list[_Call], parse: Callable[..., list[T]], instruction: str = ""
    ) -> list[T] | None:
        """What the last call's answer parses into (`parse(text, truncated=, chat=)`), or None if it failed (counted
        in `out`); an answer that parses to nothing goes to the rejects as "unparsed"."""
        r = calls[-1].response
        if r is None:
            out.failed, out.error = out.failed + 1, calls[-1].error
            return None
        found = parse(r.text, truncated=r.finish_reason == "length", chat=self.chat)
        if not found:
            out.rejected.append(
                {
                    "instruction": instruction,
                    "output": r.text,
                    "reason": "unparsed",
                    "detail": f"finish_reason={r.finish_reason}",
                    "provenance": self.provenance(rnd, calls, self.params),
                }
            )
        return found

    # -- Self-Instruct -------------------------------------------------------------------------------------------
    async def self_instruct_round(self, rnd: int, rng: random.Random) -> _Outcome:
        si = self.cfg.self_instruct
        out = _Outcome()
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
        gen = await asyncio.gather(
            *(
                self.ask(
                    "instructions", P.SI_INSTRUCTIONS, P.instructions_prompt(ex, si.instructions_per_request, self.chat)
                )
                for ex in plans
            )
        )
        new: list[tuple[str, _Call]] = []
        out.requested = len(gen)
        for ex, call in zip(plans, gen, strict=True):
            found = self._parse(rnd, out, [call], partial(P.parse_instructions, first=len(ex) + 1))
            if found is None:
                continue
            new += [(t, call) for t in found[: si.instructions_per_request]]
        verdicts = self.filter.filter_instructions([t for t, _ in new])
        survivors = []
        for (text, call), rej in zip(new, verdicts, strict=True):
            if rej is None:
                survivors.append((text, call))
            else:
                out.rejected.append(
                    {
                        **rej.to_json(),
                        "input": "",
                        "output": "",
                        "provenance": self.provenance(rnd, [call], self.params),
                    }
                )
        cls_examples = self._classify_examples(rng)
        classify = await asyncio.gather(
            *(
                self.ask(
                    "classify",
                    P.SI_CLASSIFY,
                    P.classify_prompt(cls_examples, t, self.chat),
                    max_tokens=3,
                    temperature=0.0,
                    stop=None if self.chat else ["\n"],
                )
                for t, _ in survivors
            )
        )
        is_cls = [c.response is not None and P.parse_classify(c.response.text) is True for c in classify]
        inst_calls = await asyncio.gather(
            *(
                self.ask(
                    "instances",
                    P.SI_OUTPUT_FIRST if c else P.SI_INPUT_FIRST,
                    P.instances_prompt(self._instance_examples(rng, c), t, c, si.max_instances, self.chat),
                    stop=None if self.chat else ["\nTask:"],
                )
                for (t, _), c in zip(survivors, is_cls, strict=True)
            )
        )
        out.requested += len(inst_calls)
        candidates = []
        for (text, gen_call), cls_call, inst_call, c in zip(survivors, classify, inst_calls, is_cls, strict=True):
            calls = [gen_call, cls_call, inst_call]
            pairs = self._parse(rnd, out, calls, partial(P.parse_instances, output_first=c), instruction=text)
            if pairs is None:
                continue
            prov = {**self.provenance(rnd, calls, self.params), "is_classification": c}
            candidates += [
                {"instruction": text, "input": i, "output": o, "provenance": prov} for i, o in pairs[: si.max_instances]
            ]
        # Instructions passed the ROUGE-L check above; instance checks (empty, duplicate, conflict) run here.
        result = self.filter.filter(candidates)
        out.kept, out.rejected = result.kept, out.rejected + [rej.to_json() for rej in result.rejected]
        return out

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


def run(cfg: DatagenConfig) -> RunResult:
    """Generate (or resume generating) until `num_records` records are kept or `max_rounds` rounds are done."""
    out_dir = cfg.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds_path = cfg.seeds or default_seeds()
    seeds = load_seeds(seeds_path)
    fp_path = out_dir / "fingerprint.json"
    fingerprint = _fingerprint(cfg, seeds_path)
    if fp_path.exists() and json.loads(fp_path.read_text()) != fingerprint:
        raise HuarizoError(
            f"{out_dir}: holds a run made with different settings (teacher, sampling, pipeline, filter or seeds); "
            "use another output_dir to start a new run"
        )
    _write_json(fp_path, fingerprint)
    (out_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")

    journal_path = out_dir / "rounds.jsonl"
    journal = JsonlAppender(journal_path)
    done = journal.existing()
    rounds = {j["round"] for j in done if j["round"] is not None}
    kept_rows = _committed(out_dir / "records.jsonl", rounds)
    _committed(out_dir / "rejects.jsonl", rounds)

    t = cfg.teacher
    client = LLMClient(
        t.model,
        api_base=t.api_base,
        api_key=os.environ.get(t.api_key_env) if t.api_key_env else None,
        mode=t.mode,
        concurrency=t.concurrency,
        max_retries=t.max_retries,
        timeout=t.timeout,
        backoff_base=t.backoff_base,
        cache_dir=cfg.cache_dir or out_dir / "cache",
    )
    progress = _Progress(cfg, done, len(kept_rows))
    gen = _Generator(cfg, client, seeds, progress.update_requests)
    for line in done:  # the ROUGE-L pool exactly as the finished rounds left it
        for ins in line.get("pool", []):
            gen.filter.add_to_pool(ins)
    for rec in kept_rows:
        gen.restore(rec)
    try:
        asyncio.run(_rounds(cfg, gen, client, done, len(kept_rows), max(rounds, default=-1) + 1, journal, progress))
    finally:
        journal.close()
        progress.close()
    return _summary(out_dir, done)


async def _rounds(
    cfg: DatagenConfig,
    gen: _Generator,
    client: LLMClient,
    done: list[dict[str, Any]],
    kept_total: int,
    rnd: int,
    journal: JsonlAppender,
    progress: _Progress,
) -> None:
    out_dir = cfg.output_dir
    with JsonlAppender(out_dir / "records.jsonl") as records, JsonlAppender(out_dir / "rejects.jsonl") as rejects:
        while kept_total < cfg.num_records and rnd < cfg.max_rounds:
            before = _usage_snapshot(client)
            pool_before = len(gen.filter.added)
            if cfg.pipeline == "alpaca":
                per_round = kept_total / len(done) if done else cfg.num_records
                outcome = await gen.alpaca_round(rnd, prefetch=kept_total + 2 * per_round < cfg.num_records)
            else:
                outcome = await gen.self_instruct_round(rnd, random.Random(f"{cfg.seed}:{rnd}"))
            if outcome.failed and outcome.failed >= outcome.requested:
                raise HuarizoError(
                    f"round {rnd}: every request to {cfg.teacher.model} failed ({outcome.error}); nothing was lost: "
                    "rerun the same command to resume (replies so far are cached)"
                )
            kept = [AlpacaRecord.model_validate(r).to_json() for r in outcome.kept][: cfg.num_records - kept_total]
            records.append(kept)
            rejects.append(outcome.rejected)
            for rec in kept:
                gen.restore(rec)
            kept_total += len(kept)
            line = {
                "round": rnd,
                "kept": len(kept),
                "rejected": len(outcome.rejected),
                "failed": outcome.failed,
                **_usage_delta(before, _usage_snapshot(client)),
                "pool": gen.filter.added[pool_before:],
            }
            journal.append([line])  # the round's commit point
            done.append(line)
            progress.round_done(line)
            rnd += 1
    if gen._prefetched:  # requests sent ahead for a round that was not needed: their replies stay in the cache
        before = _usage_snapshot(client)
        for _, pending in gen._prefetched.values():
            await pending
        line = {"round": None, "prefetched": True, **_usage_delta(before, _usage_snapshot(client))}
        journal.append([line])
        done.append(line)
    await client.aclose()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


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
    }


def _usage_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: b[k] - a[k] for k in a}


def _summary(out_dir: Path, done: list[dict[str, Any]]) -> RunResult:
    reasons: dict[str, int] = {}
    rej_path = out_dir / "rejects.jsonl"
    if rej_path.exists():
        for line in rej_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                reason = json.loads(line).get("reason", "?")
                reasons[reason] = reasons.get(reason, 0) + 1
    total = {
        k: sum(d.get(k, 0) for d in done)
        for k in ("kept", "rejected", "failed", "requests", "cached", "prompt_tokens", "completion_tokens", "cost")
    }
    return RunResult(
        out_dir,
        total["kept"],
        total["rejected"],
        sum(d["round"] is not None for d in done),
        total["requests"],
        total["cached"],
        total["failed"],
        total["prompt_tokens"],
        total["completion_tokens"],
        float(total["cost"]),
        reasons,
    )


class _Progress:
    """A rich progress bar: requests, kept vs rejected, cost so far."""

    def __init__(self, cfg: DatagenConfig, done: list[dict[str, Any]], kept: int) -> None:
        self.kept = kept
        self.rejected = sum(d.get("rejected", 0) for d in done)
        self.cost = sum(d.get("cost", 0.0) for d in done)
        self.requests = 0
        self.bar: Any = None
        if not cfg.progress:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]datagen[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.bar.add_task("datagen", total=cfg.num_records, completed=kept, info=self._info())
        self.bar.start()

    def _info(self) -> str:
        return f"kept {self.kept}  rejected {self.rejected}  requests {self.requests}  cost ${self.cost:.4f}"

    def update_requests(self) -> None:
        self.requests += 1
        if self.bar is not None:
            self.bar.update(self.task, info=self._info())

    def round_done(self, line: dict[str, Any]) -> None:
        self.kept += line["kept"]
        self.rejected += line["rejected"]
        self.cost += line["cost"]
        if self.bar is not None:
            self.bar.update(self.task, completed=self.kept, info=self._info())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

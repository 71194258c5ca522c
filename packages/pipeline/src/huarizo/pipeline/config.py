"""`RecipeConfig`: the whole recipe in one YAML file, one section per stage.

Each stage section is that stage package's own config class (the same pydantic model its command uses), so a key
means the same thing in a recipe as on that command's command line. Paths inside the run (output folders, answer
files, the trained model) are filled in from `run_dir`; a recipe never repeats them.

A model the run serves itself is named in `serve:` and reached from any endpoint as `model: openai/<name>` with
`api_base: served`; the run starts it (`huarizo serve` on a free port) only when a stage that needs it runs. In
`serve:`, `model: base` is the recipe's `base_model` and `model: tuned` the model this run trains.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, ValidationError, model_validator

from huarizo.datagen.filters import FilterConfig
from huarizo.datagen.generate import DatagenConfig
from huarizo.datagen.sharegpt import CleanConfig
from huarizo.formats import ConfigError, HuarizoConfig, apply_overrides
from huarizo.judge.answer import AnswerConfig
from huarizo.judge.grade import GradeConfig
from huarizo.serve.config import ServeConfig
from huarizo.trainer.config import TrainConfig

SERVED = "served"
"""The `api_base` of an endpoint served by the run: `model: openai/<name>` names the entry of `serve:`."""
BASE, TUNED = "base", "tuned"
"""`serve.<name>.model` values meaning the recipe's base model and the model the train stage writes."""
RUN_OWNED = {"AnswerConfig": {"out", "questions", "model_id"}, "GradeConfig": {"out", "questions", "answers"}}
"""Required keys of stage configs that a recipe leaves out because the run fills them in."""
STAGES = ("datagen", "filter", "clean", "train", "answer", "metrics", "judge", "report")
"""Every stage, in the order a run takes them."""


class LaunchConfig(HuarizoConfig):
    """How the train stage starts the trainer: one process, or `torchrun` / `deepspeed` for several."""

    launcher: Literal["python", "torchrun", "deepspeed"] = Field(
        default="python",
        description="python: one process (`python -m huarizo.trainer`); torchrun or deepspeed: several",
    )
    nproc_per_node: int = Field(default=1, ge=1, description="processes (GPUs) per node")
    nnodes: int = Field(default=1, ge=1, description="nodes (torchrun: also give the rendezvous in `args`)")
    hostfile: Path | None = Field(default=None, description="deepspeed: the hostfile of a multi-node run")
    args: list[str] = Field(default_factory=list, description="extra launcher arguments, e.g. --rdzv_endpoint=HOST")


class CleanStage(CleanConfig):
    """ShareGPT cleaning (`huarizo clean-sharegpt`) of the given files; the cleaned conversations are trained on."""

    files: list[Path] = Field(min_length=1, description="ShareGPT files to clean (JSON or JSONL)")


class MetricsConfig(HuarizoConfig):
    """Reference metrics of every answering model: ROUGE-L, exact match and stop rate, with bootstrap intervals."""

    bootstrap: int = Field(default=1000, ge=10, description="bootstrap resamples of the questions for the intervals")
    level: float = Field(default=0.95, gt=0, lt=1, description="confidence level of the intervals")


class ReportConfig(HuarizoConfig):
    """The run's report (`report.md`, `report.html`, `summary.json`)."""

    title: str | None = Field(default=None, description="report title (default: the recipe file's name)")
    examples: int = Field(default=5, ge=0, description="questions shown with every model's answer side by side")


class RecipeConfig(HuarizoConfig):
    """A whole recipe: shared settings and one section per stage; a stage runs when its section is present."""

    run_dir: Path = Field(default=Path("runs/recipe"), description="the run folder: one subfolder per stage")
    seed: int = Field(default=0, description="seed of every stage that takes one, unless its section sets its own")
    base_model: str = Field(
        default="embedded", description="the model to fine-tune (default of train.model.ref) and `model: base` in serve"
    )
    include_seeds: bool = Field(
        default=False, description="filter: add the seed tasks' instances to the generated records (the training data)"
    )
    questions: Path | None = Field(default=None, description="held-out questions answered, scored and judged")
    serve: dict[str, ServeConfig] = Field(
        default_factory=dict,
        description="models the run serves, by name (`model: base`, `model: tuned` or a model reference); "
        "endpoints reach one as `model: openai/<name>` with `api_base: served`",
    )
    datagen: DatagenConfig | None = Field(default=None, description="instruction data generation (huarizo datagen run)")
    filter: FilterConfig | None = Field(
        default=None,
        description="the filter of the training data (huarizo filter); also datagen's unless it sets its own",
    )
    clean: CleanStage | None = Field(default=None, description="ShareGPT cleaning (huarizo clean-sharegpt)")
    train: TrainConfig | None = Field(default=None, description="fine-tuning (huarizo train), on the stages' data")
    launch: LaunchConfig = Field(default_factory=lambda: LaunchConfig(), description="how the trainer is started")
    answer: dict[str, AnswerConfig] | None = Field(
        default=None, description="models answering the questions, by name (huarizo judge answer's config, per model)"
    )
    metrics: MetricsConfig | None = Field(default=None, description="reference metrics of the answers")
    judge: GradeConfig | None = Field(
        default=None, description="LLM judge (huarizo judge grade); answers/baseline may name answer entries"
    )
    report: ReportConfig = Field(default_factory=lambda: ReportConfig(), description="the report")

    @model_validator(mode="before")
    @classmethod
    def _fill_run_paths(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return _fill(copy.deepcopy(data))

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        problems = []
        for stage, where, name in self.served_references():
            if name not in self.serve:
                served = ", ".join(self.serve) or "none"
                problems.append(
                    f"stage {stage}: {where} is served by the run but names no entry of serve (served: {served})"
                )
            elif stage == "datagen" and self.serve[name].model == TUNED:
                problems.append(f"stage datagen: {where}: the teacher cannot be the model this run trains")
        for name, cfg in self.serve.items():
            if cfg.model == TUNED and self.train is None:
                problems.append(f"serve.{name}: model: tuned needs a train section")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The JSON schema, where the keys the run fills in (output paths, the questions) are not required."""
        schema = super().model_json_schema(*args, **kwargs)
        for name, keys in RUN_OWNED.items():
            found = schema.get("$defs", {}).get(name)
            if found is not None and "required" in found:
                found["required"] = [k for k in found["required"] if k not in keys]
        return schema

    def stages(self) -> list[str]:
        """The stages of this recipe, in run order."""
        present = [s for s in STAGES[:-1] if getattr(self, s) is not None]
        return [*present, "report"] if present else []

    def served_references(self) -> list[tuple[str, str, str]]:
        """(stage, where, served name) of every endpoint with `api_base: served`."""
        out = []
        for stage in STAGES:
            section = getattr(self, stage, None)
            if isinstance(section, HuarizoConfig):
                data: Any = section.model_dump(mode="json")
            elif isinstance(section, dict):
                data = {k: v.model_dump(mode="json") for k, v in section.items()}
            else:
                continue
            for where, model in _served_endpoints(data, ""):
                out.append((stage, where, model.rsplit("/", 1)[-1]))
        return out

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        overrides: Sequence[str] = (),
        flags: Mapping[str, Any] | None = None,
    ) -> Self:
        """Load a recipe: the YAML file, then `--set` overrides. Errors are one line naming the stage and key."""
        source = str(path) if path is not None else "the command line"
        data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
            except FileNotFoundError:
                raise ConfigError(f"{source}: no such recipe file") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{source}: cannot read the recipe: {exc}") from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{source}: the top level must be a mapping of keys")
            data = loaded or {}
        set_keys = [o.partition("=")[0].strip() for o in overrides]
        apply_overrides(data, overrides)
        for key, value in (flags or {}).items():
            apply_overrides(data, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
            set_keys.append(key)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(explain(exc, source, set_keys)) from None


def _served_endpoints(data: Any, where: str) -> Iterator[tuple[str, str]]:
    """(where, model string) of every mapping in a section dump whose `api_base` is `served`."""
    if isinstance(data, dict):
        if data.get("api_base") == SERVED:
            model = data.get("model") or data.get("judge") or ""
            yield where, str(model)
        for key, value in data.items():
            yield from _served_endpoints(value, f"{where}.{key}" if where else key)


def _fill(data: dict[str, Any]) -> dict[str, Any]:
    """Fill the paths the run owns and the shared defaults into the raw recipe; refuse run paths set otherwise."""
    fill = _Fill(data)
    fill.datagen()
    fill.train()
    fill.serve()
    fill.answer()
    fill.judge()
    if fill.problems:
        raise ValueError("; ".join(fill.problems))
    return data


class _Fill:
    """A raw recipe being filled in place, one stage section at a time, and the run paths found set otherwise."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.run = Path(str(data.get("run_dir") or "runs/recipe"))
        self.seed = data.get("seed", 0)
        self.questions = data.get("questions")
        self.problems: list[str] = []

    def own(self, section: dict[str, Any], stage: str, key: str, value: Any) -> None:
        """Set a key the run owns; a different value already there is a problem."""
        if key in section and section[key] is not None and str(section[key]) != str(value):
            self.problems.append(f"stage {stage}: {key} is set by the run ({value}); remove it from the recipe")
        section[key] = value

    def section(self, name: str) -> dict[str, Any] | None:
        value = self.data.get(name)
        return value if isinstance(value, dict) else None

    def datagen(self) -> None:
        """Output folder and seed; the recipe's filter unless datagen sets its own."""
        if (s := self.section("datagen")) is not None:
            self.own(s, "datagen", "output_dir", str(self.run / "datagen"))
            s.setdefault("seed", self.seed)
            if "filter" not in s and self.section("filter") is not None:
                s["filter"] = copy.deepcopy(self.data["filter"])

    def train(self) -> None:
        """Output folder, the base model and the seed."""
        if (s := self.section("train")) is not None:
            self.own(s, "train", "output_dir", str(self.run / "train"))
            model = s.setdefault("model", {})
            if isinstance(model, dict):
                model.setdefault("ref", self.data.get("base_model", "embedded"))
            optim = s.setdefault("optim", {})
            if isinstance(optim, dict):
                optim.setdefault("seed", self.seed)

    def serve(self) -> None:
        """Each server's model name (its entry's name) and port (picked at start)."""
        if (s := self.section("serve")) is not None:
            for name, entry in s.items():
                if isinstance(entry, dict):
                    self.own(entry, f"serve.{name}", "model_name", name)
                    self.own(entry, f"serve.{name}", "port", 0)

    def answer(self) -> None:
        """Each answerer's output file, model id and the shared questions."""
        if (answers := self.section("answer")) is not None:
            for name, entry in answers.items():
                if isinstance(entry, dict):
                    self.own(entry, f"answer.{name}", "out", str(self.run / "answer" / f"{name}.jsonl"))
                    self.own(entry, f"answer.{name}", "model_id", name)
                    if self.questions is None:
                        self.problems.append("stage answer: needs the shared `questions` file")
                    else:
                        self.own(entry, f"answer.{name}", "questions", str(self.questions))

    def judge(self) -> None:
        """Output folder, seed, questions; answers and baseline named by answer entry become their files."""
        if (s := self.section("judge")) is None:
            return
        self.own(s, "judge", "out", str(self.run / "judge"))
        s.setdefault("seed", self.seed)
        if self.questions is not None:
            self.own(s, "judge", "questions", str(self.questions))
        if (answers := self.section("answer")) is not None:
            files = {name: str(self.run / "answer" / f"{name}.jsonl") for name in answers}
            baseline = s.get("baseline")
            if baseline in files:
                s["baseline"] = files[baseline]
            given = s.get("answers")
            if given is None:
                s["answers"] = [f for name, f in files.items() if f != s.get("baseline")]
            else:
                given = [given] if isinstance(given, str) else given
                s["answers"] = [files.get(a, a) if isinstance(a, str) else a for a in given]


def explain(exc: ValidationError, source: str, set_keys: Sequence[str] = ()) -> str:
    """One line for a recipe's validation errors: where the value came from, the stage and the key."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        where = "--set" if any(dotted == k or dotted.startswith(k + ".") for k in set_keys) else source
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            lines.append(f"{where}: {msg}")
            continue
        head, rest = loc[0], ".".join(loc[1:])
        stage = f"stage {head}" if head in STAGES or head in ("serve", "launch") else None
        key = rest if stage else dotted
        prefix = f"{where}: {stage}: " if stage else f"{where}: "
        if err["type"] == "extra_forbidden":
            lines.append(f"{prefix}unknown key {key!r}")
        elif err["type"] == "missing":
            lines.append(f"{prefix}missing required key {key!r}")
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if isinstance(got, str | int | float | bool) or got is None else ""
            lines.append(f"{prefix}{key}: {msg}{shown}" if key else f"{prefix}{msg}{shown}")
    extra = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
    return "; ".join(lines[:3]) + extra

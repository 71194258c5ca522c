"""Model cards: the `README.md` of every model folder Huarizo writes (base model, data, template, training config,
metrics), with the Hugging Face card header (`base_model`, `library_name`, `tags`) so the hub reads it too."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from huarizo.formats import write_text_atomic

CARD = "README.md"


@dataclass
class ModelCard:
    """What a model card says; every field but `title` and `made_by` may be empty."""

    title: str
    made_by: str
    """The command (or function) that wrote the folder."""
    base: str | None = None
    data: list[str] = field(default_factory=list)
    template: str | None = None
    config: str | None = None
    """The resolved config (YAML) that produced the model."""
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        """The card as Markdown with a YAML header; user-given text is HTML-escaped."""
        header: dict[str, Any] = {"library_name": "transformers", "tags": ["huarizo"]}
        if self.base:
            header["base_model"] = self.base
        out = ["---", yaml.safe_dump(header, sort_keys=True, allow_unicode=True).rstrip(), "---", ""]
        out += [f"# {_esc(self.title)}", "", f"Written by `{self.made_by}` (Huarizo).", ""]
        rows = [("base model", self.base), ("prompt template", self.template)]
        out += [f"- **{k}**: {_esc(v)}" for k, v in rows if v]
        if self.data:
            out += ["- **data**:", *[f"  - {_esc(d)}" for d in self.data]]
        if self.metrics:
            out += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
            out += [f"| {_esc(k)} | {_esc(_fmt(v))} |" for k, v in self.metrics.items()]
        if self.notes:
            out += ["", "## Notes", "", *[f"- {_esc(n)}" for n in self.notes]]
        if self.config:
            out += ["", "## Config", "", "```yaml", self.config.rstrip().replace("```", "'''"), "```"]
        return "\n".join(out) + "\n"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=False).replace("|", "\\|")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_card(folder: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write `folder/README.md` atomically."""
    return write_text_atomic(Path(folder) / CARD, card.render())


def _metrics(output_dir: Path) -> dict[str, Any]:
    rows = []
    metrics = output_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line
    out: dict[str, Any] = {}
    losses = [r for r in rows if "loss" in r]
    if losses:
        out |= {"steps": losses[-1]["step"], "first loss": losses[0]["loss"], "last loss": losses[-1]["loss"]}
    evals = [r for r in rows if "eval_loss" in r]
    if evals:
        out["last eval loss"] = evals[-1]["eval_loss"]
    return out


def train_card(cfg: Any, folder: str | os.PathLike[str], *, adapter: bool = False) -> ModelCard:
    """The card of a training run's `final/` (or `adapter/`) folder, from its config and `output_dir` files."""
    out = Path(cfg.output_dir)
    stats_file = out / "data_stats.json"
    records = json.loads(stats_file.read_text(encoding="utf-8")).get("records", {}) if stats_file.exists() else {}
    data = [f"{f.path} (weight {f.weight}, {records.get(str(f.path), '?')} records)" for f in cfg.data.files]
    notes = []
    if cfg.lora.enabled:
        lora = cfg.lora
        what = "the LoRA adapter" if adapter else "merged from a LoRA adapter"
        notes.append(f"{what}: r={lora.r}, alpha={lora.alpha}, target modules {lora.target_modules}")
        if getattr(lora, "modules_to_save", None):
            notes.append(f"fully trained modules: {lora.modules_to_save}")
    if getattr(cfg.model, "new_tokens_only", False):
        notes.append("only the embedding rows of the tokens added by extend-vocab were trained")
    return ModelCard(
        title=f"{out.name}/{Path(folder).name}",
        made_by="huarizo train",
        base=str(cfg.model.ref),
        data=data,
        template=cfg.data.template,
        config=cfg.to_yaml(),
        metrics=_metrics(out),
        notes=notes,
    )


def merge_card(base: str, adapter: str | os.PathLike[str], folder: str | os.PathLike[str]) -> ModelCard:
    """The card of a `merge-lora` folder: the base, the adapter and its LoRA settings, the template it carries."""
    adapter = Path(adapter)
    settings = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    keys = ("r", "lora_alpha", "target_modules", "modules_to_save")
    notes = [f"merged LoRA adapter {adapter}: " + ", ".join(f"{k}={settings.get(k)}" for k in keys)]
    template = None
    config = Path(folder) / "tokenizer_config.json"
    chat = Path(folder) / "chat_template.jinja"
    text = chat.read_text(encoding="utf-8") if chat.exists() else ""
    if not text and config.exists():
        text = str(json.loads(config.read_text(encoding="utf-8")).get("chat_template") or "")
    if text:
        mark = text.split("huarizo template: ", 1)
        template = mark[1].split(" ", 1)[0] if len(mark) == 2 else "the tokenizer's chat template"
    return ModelCard(
        title=f"{Path(folder).name}: {base} + LoRA",
        made_by="huarizo merge-lora",
        base=base,
        template=template,
        notes=notes,
    )


def write_train_cards(cfg: Any, final: str | os.PathLike[str]) -> None:
    """Cards for a finished run: `final/` and, with LoRA, `adapter/`."""
    if Path(final).is_dir():
        write_card(final, train_card(cfg, final))
    adapter = Path(cfg.output_dir) / "adapter"
    if cfg.lora.enabled and adapter.is_dir():
        write_card(adapter, train_card(cfg, adapter, adapter=True))

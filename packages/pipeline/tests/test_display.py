"""The live display renders every stage with its status, progress and cost (as a terminal would show it)."""

from __future__ import annotations

import io

from rich.console import Console

from huarizo.pipeline.display import Display, summary_table


def test_live_display_shows_stages_progress_and_cost() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    display = Display(["datagen", "train", "report"], console=console, live=True)
    with display:
        display.start("datagen", None, lambda: "kept 3")
        display.progress("datagen", 12, 40)
        rendered = Console(file=io.StringIO(), width=120, color_system=None)
        rendered.print(display._render())
        text = rendered.file.getvalue()  # type: ignore[attr-defined]
        assert "datagen" in text and "running" in text and "12/40" in text and "kept 3" in text
        display.finish("datagen", "done", 12.5, 0.25)
        display.start("train", lambda: 10, lambda: "step 4, loss 2.000")
        display.tick("train", 4)
        rendered = Console(file=io.StringIO(), width=120, color_system=None)
        rendered.print(display._render())
        text = rendered.file.getvalue()  # type: ignore[attr-defined]
    assert "12.5 s" in text and "$0.2500" in text and "4/10" in text and "cost so far $0.2500" in text


def test_summary_table_lists_each_stage() -> None:
    summary = {
        "run_dir": "runs/x",
        "stages": {
            "datagen": {
                "status": "done",
                "outputs": {"records": "r.jsonl"},
                "seconds": 75,
                "tokens": 1200,
                "cost": None,
            },
            "train": {"status": "skipped", "outputs": {}, "seconds": 3.0, "tokens": 0, "cost": 0.0},
        },
    }
    out = io.StringIO()
    Console(file=out, width=150, color_system=None).print(summary_table(summary))
    text = out.getvalue()
    assert "1 min 15 s" in text and "1,200" in text and "unknown" in text and "records: r.jsonl" in text

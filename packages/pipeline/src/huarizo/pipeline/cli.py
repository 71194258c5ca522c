"""`huarizo run RECIPE.yaml [--set stage.key=value ...] [--stages a,b] [--from STAGE] [--dry-run]`."""

from __future__ import annotations

import argparse
from typing import Any

from huarizo.formats import add_config_options, config_from_args

EPILOG = """\
examples:
  huarizo run configs/recipes/quickstart.yaml
  huarizo run configs/recipes/quickstart.yaml --set train.optim.lr=1e-4      # redoes train and what follows it
  huarizo run configs/recipes/alpaca-7b.yaml --dry-run
  huarizo run RECIPE.yaml --stages answer,metrics       # only these (the stages before them must have finished)
  huarizo run RECIPE.yaml --from judge                  # redo judge and everything after it
keys: huarizo config schema recipe
"""


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from huarizo.formats import HuarizoError
    from huarizo.pipeline.config import RecipeConfig

    if not args.config:
        raise HuarizoError("give a recipe file, e.g. huarizo run configs/recipes/quickstart.yaml")
    recipe = config_from_args(RecipeConfig, args)
    console = Console(highlight=False)
    if args.dry_run:
        from rich.table import Table

        from huarizo.pipeline.dryrun import dry_run

        title = f"huarizo run {args.config} --dry-run (run folder {recipe.run_dir})"
        rows = dry_run(recipe)
        if not console.is_terminal:  # plain lines for logs and pipes
            print(title, *(f"{section:<9} {item}: {finding}" for section, item, finding in rows), sep="\n")
            return 0
        table = Table(title=title, title_justify="left")
        for col in ("section", "item", "finding"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return 0
    from huarizo.pipeline.display import summary_table
    from huarizo.pipeline.run import run_recipe

    only = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    outcome = run_recipe(recipe, only=only, start=args.start, source=args.config)
    console.print(summary_table(outcome.summary))
    ran = ", ".join(outcome.ran) or "nothing (every stage was up to date)"
    console.print(f"ran: {ran}\nreport: {recipe.run_dir / 'report.html'} (and report.md, summary.json)")
    return 0


def register(sub: Any) -> None:
    """Register `huarizo run`."""
    from huarizo.pipeline.config import RecipeConfig

    p = sub.add_parser(
        "run",
        help="run a whole recipe (data, fine-tuning, serving, judging, report) from one YAML file",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(p, RecipeConfig, ["run_dir"])
    p.add_argument("--stages", metavar="A,B", help="run only these stages (comma-separated)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="redo this stage and every stage after it")
    p.add_argument(
        "--dry-run", action="store_true", help="resolve the recipe, check inputs and endpoints, estimate memory"
    )
    p.set_defaults(func=_run)

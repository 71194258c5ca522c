"""huarizo-pipeline: `huarizo run RECIPE.yaml`, the whole recipe (data, fine-tuning, serving, answering, metrics,
judging, report) from one declarative config, in a run folder whose finished stages a rerun skips.

    from huarizo.pipeline import RecipeConfig, run_recipe
    outcome = run_recipe(RecipeConfig.load("configs/recipes/quickstart.yaml"))
    print(outcome.summary["models"]["tuned"]["stop_rate"])
"""

from huarizo.pipeline.config import RecipeConfig
from huarizo.pipeline.run import RunOutcome, StageError, run_recipe

__version__ = "0.1.0"
__all__ = ["RecipeConfig", "RunOutcome", "StageError", "run_recipe"]

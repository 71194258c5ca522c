"""Judge win rate from pairwise verdicts asked in both orders.

`predictions[i]` is the judge's reply (or just its verdict) with the evaluated model shown first (as A), and
`references[i]` with it shown second (as B). Verdicts are `[[A]]`, `[[B]]` or `[[C]]` (tie). A verdict that changes
with the order counts as a tie and as inconsistent; a reply with no verdict (or conflicting ones) is an error and
left out. Win rate = (wins + ties / 2) / n, with a percentile bootstrap 95% interval.
"""

import datasets
import evaluate

from huarizo.judge.prompts import parse_pair
from huarizo.judge.stats import bootstrap_ci


class JudgeWinRate(evaluate.Metric):
    """Win rate of a model against its opponent from both-order judge verdicts."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: replies with the model first; references: replies with it second",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, bootstrap=1000, seed=0):
        outcomes, inconsistent, errors = [], 0, 0
        for first, second in zip(predictions, references, strict=True):
            v1, v2 = parse_pair(first), parse_pair(second)
            if v1 is None or v2 is None:
                errors += 1
                continue
            a = {"A": 1.0, "B": 0.0, "C": 0.5}[v1]
            b = {"A": 0.0, "B": 1.0, "C": 0.5}[v2]
            if a != b:
                inconsistent += 1
            outcomes.append(a if a == b else 0.5)
        n = len(outcomes)
        return {
            "win_rate": sum(outcomes) / n if n else None,
            "win_rate_ci": bootstrap_ci(outcomes, n=bootstrap, seed=seed) if n else None,
            "n": n,
            "wins": sum(o == 1.0 for o in outcomes),
            "ties": sum(o == 0.5 for o in outcomes),
            "losses": sum(o == 0.0 for o in outcomes),
            "inconsistent": inconsistent,
            "position_consistency": (n - inconsistent) / n if n else None,
            "errors": errors,
        }

"""ROUGE-L: F1 of the longest common subsequence of words, the overlap Self-Instruct used to filter and evaluate.

Exactly `rouge_score`'s (its default tokenizer: lower-cased runs of ASCII letters and digits; no stemming), through
`huarizo.formats.rouge_l`, the implementation datagen's novelty filter uses. With several references per prediction,
the best one counts.
"""

import datasets
import evaluate

from huarizo.formats import rouge_l


class RougeL(evaluate.Metric):
    """ROUGE-L F1, averaged over the examples."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description="predictions: list of str; references: list of str (or list of lists of str)",
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
            ],
        )

    def _compute(self, predictions, references):
        scores = []
        for pred, ref in zip(predictions, references, strict=True):
            refs = [ref] if isinstance(ref, str) else list(ref)
            scores.append(max(rouge_l(pred, r) for r in refs) if refs else 0.0)
        return {"rougeL": sum(scores) / len(scores) if scores else 0.0}

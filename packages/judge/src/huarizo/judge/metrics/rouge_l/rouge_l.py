"""ROUGE-L: F1 of the longest common subsequence of words, the overlap Self-Instruct used to filter and evaluate.

Tokens are lower-cased runs of letters and digits. With several references per prediction, the best one counts.
"""

import re

import datasets
import evaluate

_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text):
    return _TOKEN.findall(text.lower())


def _lcs(a, b):
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction, reference):
    """ROUGE-L F1 of two strings."""
    p, r = _tokens(prediction), _tokens(reference)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


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

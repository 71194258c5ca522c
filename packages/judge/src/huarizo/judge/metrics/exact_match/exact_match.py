"""Exact match for classification-style tasks: the fraction of predictions equal to the reference label after
normalisation (case, surrounding whitespace and punctuation, inner whitespace runs)."""

import re
import string

import datasets
import evaluate


def normalize(text, ignore_case=True):
    """The label as compared: trimmed of whitespace and punctuation, inner whitespace collapsed."""
    text = " ".join(text.split()).strip(string.punctuation + " ")
    text = re.sub(r"\s+", " ", text)
    return text.lower() if ignore_case else text


class ExactMatch(evaluate.Metric):
    """Normalised exact match."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: list of str; references: list of str; ignore_case: bool = True",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case=True):
        pairs = zip(predictions, references, strict=True)
        hits = [normalize(p, ignore_case) == normalize(r, ignore_case) for p, r in pairs]
        return {"exact_match": sum(hits) / len(hits) if hits else 0.0}

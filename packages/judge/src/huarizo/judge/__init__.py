"""huarizo-judge: answer question sets, grade answers with any LLM judge (single or pairwise, both orders; verdicts
read from token probabilities or text), score existing judgments, audit the judge, and report win rates with
standard errors and confidence intervals."""

from huarizo.judge.answer import answer, ended_by_itself, ending_counts
from huarizo.judge.config import AnswerConfig, GradeConfig, HarnessConfig, ScoreConfig
from huarizo.judge.grade import grade
from huarizo.judge.harness import harness, write_choice_task
from huarizo.judge.judgments import Judgment
from huarizo.judge.labels import Label, load_labels
from huarizo.judge.metrics import metric_path
from huarizo.judge.prompts import parse_pair, parse_rating
from huarizo.judge.reference import reference_metrics, turn_endings
from huarizo.judge.results import AnswerResult, GradeResult, JudgeIncomplete
from huarizo.judge.score import READERS, Reader, score

__version__ = "0.1.0"
__all__ = [
    "READERS",
    "AnswerConfig",
    "AnswerResult",
    "GradeConfig",
    "GradeResult",
    "HarnessConfig",
    "JudgeIncomplete",
    "Judgment",
    "Label",
    "Reader",
    "ScoreConfig",
    "answer",
    "ended_by_itself",
    "ending_counts",
    "grade",
    "harness",
    "load_labels",
    "metric_path",
    "parse_pair",
    "parse_rating",
    "reference_metrics",
    "score",
    "turn_endings",
    "write_choice_task",
]

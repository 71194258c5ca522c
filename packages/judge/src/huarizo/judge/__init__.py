"""huarizo-judge: answer question sets, grade answers with any LLM judge (single or pairwise, both orders), audit
the judge, and report win rates with confidence intervals."""

from huarizo.judge.answer import AnswerConfig, answer
from huarizo.judge.data import Answer, Question, QuestionSet, load_answers, load_questions, load_references
from huarizo.judge.grade import GradeConfig, GradeResult, Judgment, grade
from huarizo.judge.harness import HarnessConfig, harness, write_choice_task
from huarizo.judge.labels import Label, load_labels
from huarizo.judge.metrics import metric_path
from huarizo.judge.prompts import parse_pair, parse_rating

__version__ = "0.1.0"
__all__ = [
    "Answer",
    "AnswerConfig",
    "GradeConfig",
    "GradeResult",
    "HarnessConfig",
    "Judgment",
    "Label",
    "Question",
    "QuestionSet",
    "answer",
    "grade",
    "harness",
    "load_answers",
    "load_labels",
    "load_questions",
    "load_references",
    "metric_path",
    "parse_pair",
    "parse_rating",
    "write_choice_task",
]

"""huarizo-judge: LLM-as-judge: grading, pairwise comparison, win rates and reports."""

__version__ = "0.1.0"

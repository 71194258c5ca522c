"""lm-evaluation-harness (`--model local-completions`, the Open LLM Leaderboard's tool) as a real client of
`huarizo serve`: a multiple-choice task scored by loglikelihood (echo + logprobs) and a generation task that stops at
`until: ["\\n"]`, both defined by task YAMLs over JSONL files written here; run offline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from huarizo.serve import RunningServer

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
lm_eval = pytest.importorskip("lm_eval", reason="the serve test extra installs lm-eval[api]")

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "Rome", "Berlin"], 0),
    ("How many legs has a cat?", ["two", "four", "six"], 1),
    ("Which is a fruit?", ["carrot", "potato", "apple"], 2),
    ("What colour is the sky on a clear day?", ["blue", "green", "red"], 0),
    ("What is 2 + 2?", ["3", "4", "5"], 1),
    ("Who wrote Hamlet?", ["Dickens", "Tolstoy", "Shakespeare"], 2),
    ("Which animal barks?", ["dog", "cat", "fish"], 0),
    ("What do bees make?", ["milk", "honey", "silk"], 1),
]
MC_YAML = """
task: huarizo_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GEN_YAML = """
task: huarizo_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 24
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    mc = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    gen = [{"question": q, "target": c[a]} for q, c, a in QUESTIONS] * 2
    gen = [{**d, "question": d["question"] + (" Briefly." if k >= len(QUESTIONS) else "")} for k, d in enumerate(gen)]
    for name, rows, yaml in (("mc", mc, MC_YAML), ("gen", gen, GEN_YAML)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(yaml.format(data=data))
    return folder


def _evaluate(server: RunningServer, model_dir: Path, tasks: Path, task: str) -> tuple[Any, dict[str, Any]]:
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    lm = LocalCompletionsAPI(
        base_url=f"{server.base_url}/completions",
        model=server.model_name,
        tokenizer=str(model_dir),
        tokenizer_backend="huggingface",
        tokenized_requests=True,
        batch_size=4,
        max_retries=1,
        max_length=1024,
    )
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=TaskManager(include_path=str(tasks)), log_samples=True
    )
    assert results is not None
    return lm, results


def test_lm_eval_scores_a_multiple_choice_task(
    newline_server: RunningServer, newline_model_dir: Path, tasks: Path
) -> None:
    import torch

    lm, results = _evaluate(newline_server, newline_model_dir, tasks, "huarizo_mc")
    assert "acc,none" in results["results"]["huarizo_mc"]
    samples = results["samples"]["huarizo_mc"]
    assert len(samples) == len(QUESTIONS)
    model = newline_server.served.engine.model
    checked = 0
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            got, _ = resp[0]
            ctx, cont = lm._encode_pair(context, continuation)
            with torch.inference_mode():
                logits = model(torch.tensor([ctx + cont])).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            want = sum(float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
            assert abs(got - want) < 1e-4, (context, continuation, got, want)
            checked += 1
    assert checked == 3 * len(QUESTIONS)


def test_lm_eval_generation_stops_at_its_until(
    newline_server: RunningServer, newline_model_dir: Path, tasks: Path
) -> None:
    """Each answer is the model's greedy continuation cut at the first newline (some answers do have one)."""
    import torch

    lm, results = _evaluate(newline_server, newline_model_dir, tasks, "huarizo_gen")
    samples = results["samples"]["huarizo_gen"]
    assert len(samples) == 2 * len(QUESTIONS)
    model, tok = newline_server.served.engine.model, newline_server.served.tokenizer
    cut = 0
    for sample in samples:
        context = sample["arguments"][0][0]
        ids = lm.tok_encode(context)
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
        )
        full = tok.decode(out[0][len(ids) :], skip_special_tokens=True)
        assert sample["resps"][0][0] == full.split("\n")[0], context
        cut += "\n" in full
    assert cut > 0, "no greedy answer had a newline: the until was never exercised"

"""The reference ROUGE-L novelty filter: Self-Instruct's sequential loop through the `rouge_score` package itself
(slow). Tests and benchmarks check that datagen's fast filter makes exactly its decisions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from huarizo.formats.rouge import RougeTokenizer, RougeTokenizerName, rouge_tokenizer


def rouge_score_filter(
    candidates: Sequence[str],
    pool: Iterable[str] = (),
    *,
    threshold: float = 0.7,
    tokenizer: RougeTokenizerName | RougeTokenizer = "default",
) -> list[bool]:
    """The original sequential filter through `rouge_score` itself (slow; the reference the fast one must equal).

    Returns one `kept` flag per candidate.
    """
    from rouge_score import rouge_scorer

    if tokenizer == "default":  # rouge_score's own tokenizer, not ours
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    else:
        custom = rouge_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=custom)
    tok = scorer._tokenizer
    kept_tokens = [tok.tokenize(t) for t in pool]
    kept = []
    for text in candidates:
        tokens = tok.tokenize(text)
        scores = [rouge_scorer._score_lcs(tokens, other).fmeasure for other in kept_tokens]
        ok = not scores or max(scores) <= threshold
        kept.append(ok)
        if ok:
            kept_tokens.append(tokens)
    return kept

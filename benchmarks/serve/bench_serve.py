"""Serving throughput: Huarizo's continuous batching vs one request at a time behind a lock (FastChat's model worker).

Both servers are real HTTP servers on loopback, serving the same model object in the same run; N concurrent clients
(1, 4, 16) each send `ROUNDS` completion requests of `MAX_TOKENS` greedy tokens (`ignore_eos`, so every answer has the
same length). Reported: aggregate generated tokens/s, p50/p95 request latency, and the ratio to the baseline (target:
3x at 16 clients). Also the single-stream tokens/s of the model in float32 and bfloat16 (llama.cpp reaches about 79
tok/s on this machine), and what logprobs cost: 16 clients sending chat requests with `logprobs` and
`top_logprobs=5` against the same requests without, interleaved in the same run (target: < 1.3x the time).

    pytest benchmarks/serve -s -o python_files='bench_*.py'
    HUARIZO_BENCH_MODEL=tiny pytest benchmarks/serve -s -o python_files='bench_*.py'   # a quick smoke run
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from huarizo.serve import SamplingParams, ServeConfig, ServedModel, start_server

MODEL = os.environ.get("HUARIZO_BENCH_MODEL", "embedded")
DTYPE = os.environ.get("HUARIZO_BENCH_DTYPE", "bfloat16")
MAX_TOKENS = int(os.environ.get("HUARIZO_BENCH_TOKENS", "32"))
ROUNDS = 2
LEVELS = (1, 4, 16)
LOGPROB_CLIENTS = 16
OUT = Path(__file__).resolve().parent

TOPICS = [
    "the water cycle",
    "how bridges carry weight",
    "why the sky is blue",
    "the history of paper",
    "how vaccines work",
    "the rules of chess",
    "compound interest",
    "volcanoes",
]


def _prompt(client: int, k: int) -> str:
    return f"Question {client}.{k}: explain {TOPICS[(client + k) % len(TOPICS)]} to a curious child.\nAnswer:"


def _baseline_app(served: ServedModel) -> Any:
    """FastChat's model-worker pattern: each request runs `generate` alone, behind a lock."""
    import torch
    from fastapi import FastAPI

    app = FastAPI()
    lock = threading.Lock()
    model, tok = served.engine.model, served.tokenizer

    @app.post("/v1/completions")
    def complete(body: dict[str, Any]) -> dict[str, Any]:
        ids = torch.tensor([tok.encode(body["prompt"])])
        n = int(body["max_tokens"])
        with lock, torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
        new = out[0][ids.shape[1] :]
        text = tok.decode(new, skip_special_tokens=True)
        return {"choices": [{"index": 0, "text": text}], "usage": {"completion_tokens": len(new)}}

    return app


class _Baseline:
    def __init__(self, served: ServedModel) -> None:
        import socket

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(_baseline_app(served), log_level="warning"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)

    def __enter__(self) -> _Baseline:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()


async def _load(url: str, clients: int, top_logprobs: int | None = None) -> dict[str, float]:
    """`clients` concurrent clients, each sending ROUNDS requests one after the other: completions, or chat
    completions with `top_logprobs` alternatives per token when it is set (0 or more)."""
    latencies: list[float] = []
    tokens = 0

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for k in range(ROUNDS):
            body: dict[str, Any] = {"max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
            if top_logprobs is None:
                body["prompt"] = _prompt(c, k)
            else:
                body["messages"] = [{"role": "user", "content": _prompt(c, k)}]
                if top_logprobs > 0:
                    body.update(logprobs=True, top_logprobs=top_logprobs)
            start = time.perf_counter()
            r = await http.post(f"{url}/{'completions' if top_logprobs is None else 'chat/completions'}", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            tokens += r.json()["usage"]["completion_tokens"]
            if top_logprobs:
                content = r.json()["choices"][0]["logprobs"]["content"]
                assert len(content) == MAX_TOKENS and all(len(t["top_logprobs"]) == top_logprobs for t in content)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
        start = time.perf_counter()
        await asyncio.gather(*[client(c, http) for c in range(clients)])
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "tok_s": tokens / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "tokens": tokens,
    }


def _single_stream(served: ServedModel, n: int = 64) -> float:
    ids = served.tokenizer.encode(_prompt(0, 0))
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    served.engine.generate(ids, SamplingParams(max_tokens=4, temperature=0))  # warm up
    start = time.perf_counter()
    out = served.engine.generate(ids, params)
    return out.completion_tokens / (time.perf_counter() - start)


def _plot(rows: dict[int, dict[str, dict[str, float]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(LEVELS))
    for i, (name, key) in enumerate([("huarizo (continuous batching)", "ours"), ("one at a time (lock)", "base")]):
        ax.bar([x + (i - 0.5) * 0.38 for x in xs], [rows[c][key]["tok_s"] for c in LEVELS], 0.38, label=name)
    ax.set_xticks(list(xs), [f"{c} clients" for c in LEVELS])
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{MODEL} ({DTYPE}), {MAX_TOKENS} tokens per request, CPU")
    ax.legend()
    fig.tight_layout()
    path = OUT / "serve_throughput.png"
    fig.savefig(path, dpi=120)
    return path


def test_batching_vs_one_at_a_time(benchmark: Any) -> None:
    levels = LEVELS
    threads = os.environ.get("OMP_NUM_THREADS")
    cfg = ServeConfig(model=MODEL, dtype=DTYPE, port=0, max_batch_size=16, log_level="error")  # type: ignore[arg-type]
    rows: dict[int, dict[str, dict[str, float]]] = {}
    with start_server(cfg) as server, _Baseline(server.served) as baseline:
        asyncio.run(_load(server.base_url, 1))  # warm up both
        asyncio.run(_load(baseline.url, 1))

        def run() -> None:  # interleaved, so drifting load on a shared machine hits both alike
            for c in levels:
                rows[c] = {"ours": asyncio.run(_load(server.base_url, c)), "base": asyncio.run(_load(baseline.url, c))}

        benchmark.pedantic(run, rounds=1, iterations=1)
        logprobs: dict[str, list[dict[str, float]]] = {"plain": [], "top5": []}
        for _ in range(2):  # interleaved as well: plain, top_logprobs=5, plain, top_logprobs=5
            logprobs["plain"].append(asyncio.run(_load(server.base_url, LOGPROB_CLIENTS, top_logprobs=0)))
            logprobs["top5"].append(asyncio.run(_load(server.base_url, LOGPROB_CLIENTS, top_logprobs=5)))
        single = {DTYPE: _single_stream(server.served)}
    other = "float32" if DTYPE != "float32" else "bfloat16"
    served = ServedModel.load(cfg.model_copy(update={"dtype": other}))
    try:
        single[other] = _single_stream(served)
    finally:
        served.close()

    print(
        f"\nmodel {MODEL} ({DTYPE}), {MAX_TOKENS} greedy tokens per request, {ROUNDS} requests per client, "
        f"OMP_NUM_THREADS={threads}"
    )
    print(
        f"{'clients':>7} | {'huarizo tok/s':>13} {'p50 s':>6} {'p95 s':>6} | {'baseline tok/s':>14} "
        f"{'p50 s':>6} {'p95 s':>6} | ratio"
    )
    for c in levels:
        o, b = rows[c]["ours"], rows[c]["base"]
        print(
            f"{c:>7} | {o['tok_s']:>13.1f} {o['p50']:>6.2f} {o['p95']:>6.2f} | {b['tok_s']:>14.1f} "
            f"{b['p50']:>6.2f} {b['p95']:>6.2f} | {o['tok_s'] / b['tok_s']:.2f}x"
        )
    print("single stream: " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in single.items()) + " (llama.cpp: ~79 tok/s)")
    plain = statistics.mean(r["tok_s"] for r in logprobs["plain"])
    top5 = statistics.mean(r["tok_s"] for r in logprobs["top5"])
    lp_p50 = {k: statistics.mean(r["p50"] for r in v) for k, v in logprobs.items()}
    print(
        f"chat, {LOGPROB_CLIENTS} clients: without logprobs {plain:.1f} tok/s (p50 {lp_p50['plain']:.2f} s), "
        f"top_logprobs=5 {top5:.1f} tok/s (p50 {lp_p50['top5']:.2f} s): a logprobs request costs {plain / top5:.2f}x"
    )
    print(f"plot: {_plot(rows)}")
    ratios = {c: rows[c]["ours"]["tok_s"] / rows[c]["base"]["tok_s"] for c in levels}
    benchmark.extra_info.update({f"ratio_{c}": r for c, r in ratios.items()})
    benchmark.extra_info["logprobs_cost"] = plain / top5
    assert all(rows[c]["ours"]["tokens"] == c * ROUNDS * MAX_TOKENS for c in levels)
    if MODEL == "embedded":  # the targets are the real model's (the tiny one is all overhead)
        assert ratios[16] >= 3.0, f"batching is {ratios[16]:.2f}x one-at-a-time at 16 clients (target: 3x)"
        assert plain / top5 < 1.3, f"a top_logprobs=5 request costs {plain / top5:.2f}x one without (target: < 1.3x)"

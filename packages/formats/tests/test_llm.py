"""LLMClient against a real loopback server (ScriptedServer) through the real litellm: retries, cache, bounds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from huarizo.formats.llm import (
    LLMClient,
    LLMError,
    ServerStartError,
    free_port,
    request_hash,
    stop_process,
    wait_until_ready,
)
from huarizo.formats.testing import PromptCounter, Reply, ScriptedServer, prompt_text


def _client(server: ScriptedServer, tmp_path: Path | None = None, **kw: Any) -> LLMClient:
    opts: dict[str, Any] = {"api_base": server.url, "api_key": "x", "backoff_base": 0.01, "max_retries": 3}
    opts.update(kw)
    return LLMClient("openai/teacher", cache_dir=tmp_path, **opts)


def _faulty(faults: list[Reply]) -> tuple[Any, dict[str, int]]:
    """A script whose first replies to each prompt are the given faults, then 'ok: <prompt>'; and the attempts per
    prompt."""
    counter = PromptCounter()

    def script(req: dict[str, Any]) -> str | Reply:
        k, _ = counter(req)
        return faults[k] if k < len(faults) else f"ok: {prompt_text(req)}"

    return script, counter.attempts


@pytest.mark.parametrize("fault", [Reply(status=429), Reply(status=500), Reply(status=503)], ids=["429", "500", "503"])
def test_retries_transient_errors(fault: Reply) -> None:
    script, seen = _faulty([fault, fault])
    with ScriptedServer(script) as server:
        client = _client(server)
        resp = client.complete("hello", max_tokens=8)
    assert resp.text == "ok: hello"
    assert seen["hello"] == 3
    assert client.usage.retries == 2 and client.usage.requests == 1


def test_retries_timeouts() -> None:
    script, seen = _faulty([Reply(text="late", delay=1.5)])
    with ScriptedServer(script) as server:
        client = _client(server, timeout=0.5)
        resp = client.complete("slow?")
    assert resp.text == "ok: slow?"
    assert seen["slow?"] == 2 and client.usage.retries == 1


def test_no_retry_on_400() -> None:
    script, seen = _faulty([Reply(status=400)] * 5)
    with ScriptedServer(script) as server:
        client = _client(server)
        with pytest.raises(LLMError, match="after 1 tries"):
            client.complete("bad request")
    assert seen["bad request"] == 1
    assert client.usage.failures == 1 and client.usage.retries == 0


def test_gives_up_after_max_retries() -> None:
    script, seen = _faulty([Reply(status=500)] * 10)
    with ScriptedServer(script) as server:
        client = _client(server, max_retries=2)
        with pytest.raises(LLMError, match="after 3 tries"):
            client.complete("down")
    assert seen["down"] == 3


def test_cache_hit_makes_no_request(tmp_path: Path) -> None:
    with ScriptedServer(lambda req: "cached answer") as server:
        first = _client(server, tmp_path).complete("q", temperature=0.0)
        again = _client(server, tmp_path).complete("q", temperature=0.0)  # a new client: only the disk is shared
        assert len(server.requests) == 1
        other = _client(server, tmp_path).complete("q", temperature=0.5)  # other parameters: another request
        assert len(server.requests) == 2
    assert not first.cached and again.cached and not other.cached
    assert again.text == first.text and again.request_hash == first.request_hash
    assert first.request_hash == request_hash(
        "openai/teacher", {"messages": [{"role": "user", "content": "q"}], "temperature": 0.0}
    )


def test_concurrency_bound_respected() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def script(req: dict[str, Any]) -> str:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active >= 3:
                release.set()
        release.wait(timeout=2)
        with lock:
            active -= 1
        return "done"

    with ScriptedServer(script, latency=0.05) as server:
        client = _client(server, concurrency=3)

        async def main() -> list[Any]:
            return list(await asyncio.gather(*(client.acomplete(f"job {i}") for i in range(12))))

        results = asyncio.run(main())
    assert [r.text for r in results] == ["done"] * 12
    assert peak == 3 and client.max_in_flight == 3


def test_completion_mode_sends_a_prompt() -> None:
    with ScriptedServer(lambda req: " continued text") as server:
        client = _client(server, mode="completion")
        resp = client.complete("Task 1: write a poem\nTask 2:", max_tokens=16, stop=["\n"])
        body = server.requests[0]
    assert resp.text == " continued text" and resp.finish_reason == "stop"
    assert "prompt" in body and "messages" not in body
    assert body["stop"] == ["\n"] and body["max_tokens"] == 16
    with pytest.raises(LLMError, match="prompt string"):
        client.payload([{"role": "user", "content": "x"}])


def test_garbage_reply_is_an_error_not_a_crash() -> None:
    with ScriptedServer(lambda req: Reply(raw_body="<html>502 bad gateway</html>")) as server:
        client = _client(server, max_retries=1)
        with pytest.raises(LLMError):
            client.complete("anything")
        assert client.usage.failures == 1


def test_malformed_text_is_returned_as_text() -> None:
    junk = "}{ not json at all \x00 Task: ???"
    with ScriptedServer(lambda req: junk) as server:
        resp = _client(server).complete("x")
    assert resp.text == junk


def test_tokens_counted_and_unknown_model_costs_nothing() -> None:
    with ScriptedServer(lambda req: "one two three") as server:
        client = _client(server)
        resp = client.complete("a b c d")
    assert resp.completion_tokens == 3 and resp.prompt_tokens == 4
    assert resp.cost is None and client.usage.unpriced == 1 and client.usage.cost == 0.0


def test_known_model_is_priced_from_the_local_table() -> None:
    with ScriptedServer(lambda req: "priced reply", model="gpt-4o-mini") as server:
        client = LLMClient("openai/gpt-4o-mini", api_base=server.url, api_key="x")
        resp = client.complete("a b c d", max_tokens=5)
    assert resp.cost is not None and resp.cost > 0
    assert client.usage.cost == pytest.approx(resp.cost)


def test_another_model_under_the_same_name_is_not_answered_from_the_cache(tmp_path: Path) -> None:
    """A server that fingerprints its model (as `huarizo serve` does): answers cached from the last model are asked
    for again once the fingerprint changes; with the server down, the cache still answers."""
    with ScriptedServer(lambda req: "from model A", model="teacher", fingerprint="A") as server:
        assert not _client(server, tmp_path).complete("q").cached
        assert _client(server, tmp_path).complete("q").cached
        server.fingerprint, server.script = "B", lambda req: "from model B"  # retrained, same name
        fresh = _client(server, tmp_path).complete("q")
        assert not fresh.cached and fresh.text == "from model B" and len(server.requests) == 2
        assert _client(server, tmp_path).complete("q").cached
    down = _client(server, tmp_path, max_retries=0).complete("q")
    assert down.cached and down.text == "from model B"


def test_a_server_without_fingerprints_on_another_port_is_asked_again(tmp_path: Path) -> None:
    """Two servers serving different models under one name, neither reporting a fingerprint (a stock vLLM, a stub):
    the second is asked itself, never answered from what the first one said."""
    with ScriptedServer(lambda req: "from the first") as first:
        assert _client(first, tmp_path).complete("q").text == "from the first"
        assert _client(first, tmp_path).complete("q").cached  # the same endpoint: the cache answers
    with ScriptedServer(lambda req: "from the second") as second:
        resp = _client(second, tmp_path).complete("q")
        assert not resp.cached and resp.text == "from the second" and len(second.requests) == 1


def test_logprobs_in_openai_chat_shape_through_litellm(tmp_path: Path) -> None:
    import math

    top = {"A": math.log(0.6), " B": math.log(0.3), "C": math.log(0.05), "x": math.log(0.01)}
    with ScriptedServer(lambda req: Reply("[[A]]", logprobs=[{"[[": -0.01, "[": -5.0}, top])) as server:
        resp = _client(server, tmp_path).complete("which?", max_tokens=4, top_logprobs=3)
        plain = _client(server).complete("which?", max_tokens=4)
        body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert plain.logprobs is None and "logprobs" not in server.requests[1]
    assert resp.logprobs is not None and [t.token for t in resp.logprobs] == ["[[", "A"]
    second = resp.logprobs[1]
    assert second.logprob == pytest.approx(math.log(0.6))
    assert [tok for tok, _ in second.top] == ["A", " B", "C"]  # the three most likely, in order
    again = _client(server, tmp_path).complete("which?", max_tokens=4, top_logprobs=3)
    assert again.cached and again.logprobs == resp.logprobs


def test_logprobs_in_openai_completion_shape_through_litellm() -> None:
    import math

    with ScriptedServer(
        lambda req: Reply("7]]", logprobs=[{"7": math.log(0.5), "8": math.log(0.4)}, {"]]": -0.1}])
    ) as s:
        resp = _client(s, mode="completion").complete("Rating: [[", max_tokens=2, top_logprobs=5)
        body = s.requests[0]
    assert body["logprobs"] == 5 and "top_logprobs" not in body
    assert resp.logprobs is not None and [t.token for t in resp.logprobs] == ["7", "]]"]
    assert dict(resp.logprobs[0].top) == pytest.approx({"7": math.log(0.5), "8": math.log(0.4)})


def test_a_server_that_ignores_logprobs_gives_none() -> None:
    with ScriptedServer(lambda req: "[[B]]") as server:
        resp = _client(server).complete("which?", top_logprobs=5)
    assert resp.text == "[[B]]" and resp.logprobs is None


def test_corrupt_foreign_and_old_cache_entries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Garbage, valid JSON with the wrong fields, and another request's entry are ignored with a warning and asked
    again; an entry written before responses carried logprobs still loads."""
    import json

    with ScriptedServer(lambda req: f"ok: {prompt_text(req)}") as server:
        client = _client(server, tmp_path)
        hashes = {q: client.complete(q).request_hash for q in ("a", "b", "c", "d")}
        paths = {q: tmp_path / h[:2] / f"{h}.json" for q, h in hashes.items()}
        paths["a"].write_text("{not json")
        paths["b"].write_text(json.dumps({"response": {"text": "x", "colour": "red"}, "fingerprint": None}))
        paths["c"].write_text(paths["d"].read_text())  # d's entry filed under c's hash
        old = json.loads(paths["d"].read_text())
        del old["response"]["logprobs"]
        paths["d"].write_text(json.dumps(old))
        fresh = _client(server, tmp_path)
        with caplog.at_level("WARNING", logger="huarizo.formats.llm"):
            got = {q: fresh.complete(q) for q in ("a", "b", "c", "d")}
    assert [q for q, r in got.items() if r.cached] == ["d"] and got["d"].text == "ok: d"
    assert all(got[q].text == f"ok: {q}" for q in "abc") and fresh.usage.cache_ignored == 3
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3 and all("ignoring the cache entry" in w for w in warned)
    assert any("another request" in w for w in warned)


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_stop_reason_tells_a_stop_string_from_the_end_of_turn(mode: str, tmp_path: Path) -> None:
    """vLLM's and huarizo serve's `stop_reason` comes through litellm, and is cached with the answer."""
    replies = iter([Reply("a", stop_reason="### Response:"), Reply("b", stop_reason=None), Reply("c", stop_reason=1)])
    with ScriptedServer(lambda req: next(replies)) as server:
        client = LLMClient("openai/m", api_base=server.url, api_key="x", mode=mode, cache_dir=tmp_path)  # type: ignore[arg-type]
        header, eos, token = (client.complete("q", max_tokens=n) for n in (1, 2, 3))
        assert (header.stop_reason, eos.stop_reason, token.stop_reason) == ("### Response:", None, 1)
        assert [r.ended_by_itself for r in (header, eos, token)] == [False, True, True]
        again = client.complete("q", max_tokens=1)
    assert again.cached and again.stop_reason == "### Response:" and not again.ended_by_itself


def test_importing_the_client_sets_no_environment_variable_until_litellm_is_used() -> None:
    code = (
        "import os, sys; import huarizo.formats.llm as llm; "
        "print(sorted(k for k in os.environ if k.startswith('LITELLM_')), 'litellm' in sys.modules); "
        "llm.import_litellm(); print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'], 'litellm' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == ["[] False", "True True"]


def test_a_server_process_that_dies_or_never_answers_is_one_error_naming_it(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("loading\nValueError: no such model\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(
        ServerStartError, match=r"^vLLM exited while starting \(code 3\): ValueError: no such model; log: "
    ):
        wait_until_ready(proc, f"http://127.0.0.1:{free_port()}", timeout=60, what="vLLM", log=log)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with pytest.raises(ServerStartError, match=r"^the server was not ready within 1 s$"):
        wait_until_ready(proc, lambda: None, timeout=1)
    assert proc.poll() is not None  # stopped, not left behind


def test_a_served_process_is_waited_for_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path)
    (tmp_path / "health").write_text("ok")
    assert wait_until_ready(proc, f"http://127.0.0.1:{port}", timeout=60) == f"http://127.0.0.1:{port}"
    stop_process(proc)
    assert proc.returncode is not None

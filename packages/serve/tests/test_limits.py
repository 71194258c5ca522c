"""What the server refuses, by name, and the bounds that keep one request or client from stalling the others: each
limit's status and message, checked with raw HTTP, raw sockets and the openai client against real servers."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from huarizo.serve import EngineBusy, RunningServer, SamplingParams, ServeConfig, start_server

MSG = [{"role": "user", "content": "hi"}]


def _until(condition: Any, what: str, deadline: float = 60.0) -> None:
    """Wait for a state of the server (polled; never a fixed sleep)."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"made_up_field": 1}, "made_up_field"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages"),
        ({"seed": 2**64}, "seed"),
        ({"n": 1000}, "n"),
    ],
)
def test_what_the_server_does_not_do_is_refused_by_name(server: RunningServer, extra: dict, param: str) -> None:
    r = httpx.post(f"{server.base_url}/chat/completions", json={"messages": MSG, "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"].startswith(param), err
    assert (err["param"] or "").startswith(param)


def test_fields_without_effect_and_text_formats_are_accepted(server: RunningServer) -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"}],
        "max_tokens": 2,
        "user": "u1",
        "metadata": {"run": "a"},
        "store": False,
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "modalities": ["text"],
        "stream_options": None,
        "seed": -(2**63),
    }
    r = httpx.post(f"{server.base_url}/chat/completions", json=body)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{server.base_url}/completions", json={"prompt": "x", "max_tokens": 1, "best_of": 1, "suffix": ""})
    assert r.status_code == 200, r.text
    for extra, param in (({"best_of": 3}, "best_of"), ({"suffix": "end"}, "suffix"), ({"echo": [1]}, "echo")):
        r = httpx.post(f"{server.base_url}/completions", json={"prompt": "x", "max_tokens": 1, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_an_unknown_model_is_a_404_naming_the_served_one(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2)  # type: ignore[arg-type]
    err = caught.value.body
    assert isinstance(err, dict) and err["code"] == "model_not_found" and "tiny-test" in err["message"]
    assert "gpt-4o" in err["message"]
    r = httpx.post(f"{server.base_url}/completions", json={"model": "other", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    ok = httpx.post(f"{server.base_url}/completions", json={"prompt": "x", "max_tokens": 1})  # no model: the served one
    assert ok.status_code == 200 and ok.json()["model"] == "tiny-test"


def test_bodies_that_are_not_json(server: RunningServer) -> None:
    url = f"{server.base_url}/chat/completions"
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):
        r = httpx.post(url, content=b'{"messages": []}', headers={"Content-Type": ctype})
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"], r.text
    assert httpx.post(url, content=b"\xff\xfe not utf-8").status_code == 400
    deep = b'{"messages": [], "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(url, content=deep, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"], r.text
    huge = b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 5000 + b"}"
    assert httpx.post(url, content=huge).status_code == 400


def test_unknown_routes_and_methods_answer_in_openais_format(server: RunningServer) -> None:
    r = httpx.post(f"{server.base_url}/embeddings", json={"input": "x"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"
    r = httpx.get(f"{server.base_url}/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert "POST" in r.headers["allow"]


def test_the_api_description_needs_the_key(keyed_server: RunningServer) -> None:
    assert httpx.get(f"{keyed_server.url}/openapi.json").status_code == 401
    r = httpx.get(f"{keyed_server.url}/openapi.json", headers={"Authorization": "Bearer k1"})
    assert r.status_code == 200 and "/v1/chat/completions" in r.json()["paths"]
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200


def test_a_request_for_too_many_sequences_is_refused_at_once(server: RunningServer) -> None:
    """2,000 prompts (or n=16 x 20 prompts) are refused before anything is tokenized or queued."""
    engine = server.served.engine
    before = engine.stats.prompt_tokens
    r = httpx.post(f"{server.base_url}/completions", json={"prompt": ["Tell me a story."] * 2000, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert "2000 sequences" in r.json()["error"]["message"] and "256" in r.json()["error"]["message"]
    r = httpx.post(f"{server.base_url}/completions", json={"prompt": ["x"] * 20, "n": 16, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert engine.stats.prompt_tokens == before, "the refused requests reached the engine"
    r = httpx.post(f"{server.base_url}/completions", json={"prompt": ["x"] * 64, "n": 4, "max_tokens": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 256


@pytest.fixture(scope="module")
def small_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """One sequence decoded at a time, at most 4 waiting, 1.5 s to send a request."""
    cfg = ServeConfig(
        model=str(tiny_model_dir),
        port=0,
        dtype="float32",
        max_batch_size=1,
        max_waiting_sequences=4,
        max_sequences_per_request=4,
        read_timeout=1.5,
    )
    with start_server(cfg) as running:
        yield running


@contextlib.contextmanager
def _frozen(server: RunningServer) -> Iterator[None]:
    """The engine stops between two steps (a sequence whose sink waits, through the public `Engine.submit`), so that
    whatever is queued meanwhile stays queued until the block ends."""
    engine, release, held = server.served.engine, threading.Event(), threading.Event()

    def sink(ev: Any) -> None:
        held.set()
        release.wait()

    handle = engine.submit([5, 6, 7], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True), sink)
    try:
        held.wait()
        yield
    finally:
        handle.cancel()
        release.set()


def test_a_full_queue_answers_429_with_retry_after(small_server: RunningServer) -> None:
    engine = small_server.served.engine
    results: list[httpx.Response] = []
    url = f"{small_server.base_url}/completions"
    waiter = threading.Thread(
        target=lambda: results.append(httpx.post(url, json={"prompt": ["a"] * 4, "max_tokens": 2}, timeout=60))
    )
    with _frozen(small_server):
        waiter.start()
        _until(lambda: engine.stats.waiting == 4, "the queue is full")
        r = httpx.post(url, json={"prompt": "one more", "max_tokens": 2})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "rate_limit_exceeded" and "retry later" in r.json()["error"]["message"]
        client = openai.OpenAI(base_url=small_server.base_url, api_key="none", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=small_server.model_name, prompt="x", max_tokens=2)
    waiter.join()
    assert results[0].status_code == 200 and len(results[0].json()["choices"]) == 4


def test_engine_admits_a_request_whole_or_not_at_all(small_server: RunningServer) -> None:
    engine = small_server.served.engine
    _until(lambda: not engine.stats.waiting and not engine.stats.running, "the engine is idle")
    params = SamplingParams(max_tokens=1)
    with pytest.raises(EngineBusy, match="at most 4"):
        engine.submit_many([([5, 6], params, lambda ev: None)] * 5)
    assert engine.stats.waiting == 0


def test_health_answers_while_another_client_floods_the_queue(small_server: RunningServer) -> None:
    """Flooding clients keep the queue full and send long prompts to tokenize; /health is answered meanwhile,
    while the queue is still full (the flood is served only after)."""
    engine = small_server.served.engine
    url = f"{small_server.base_url}/completions"
    stop, statuses = threading.Event(), []
    bodies = [{"prompt": ["flood"] * 4, "max_tokens": 2}, {"prompt": "many words " * 20_000, "max_tokens": 2}]

    def flooder(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                statuses.append(http.post(url, json=bodies[k % 2]).status_code)

    threads = [threading.Thread(target=flooder, args=(k,)) for k in range(8)]
    with _frozen(small_server):
        for t in threads:
            t.start()
        _until(lambda: engine.stats.waiting == 4 and {400, 429} <= set(statuses), "the flood fills the queue")
        for _ in range(5):
            assert httpx.get(f"{small_server.url}/health", timeout=60).status_code == 200
        assert engine.stats.waiting == 4 and 200 not in statuses, "health was answered after the flood"
        stop.set()
    for t in threads:
        t.join()
    assert 200 in statuses


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def server_log() -> Iterator[_Lines]:
    """The records of the server's log (`uvicorn.error`) from INFO up."""
    lines, logger = _Lines(), logging.getLogger("uvicorn.error")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.setLevel(level)
    logger.removeHandler(lines)


def _connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(60)  # only a guard against hanging the test: the server closes long before
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_half_open_connections_are_closed(small_server: RunningServer, server_log: _Lines) -> None:
    """Headers that never end, and a body that never comes, do not hold a connection."""
    with _connect(small_server) as silent:
        assert _read_all(silent) == b""  # connected, sent nothing: closed
    with _connect(small_server) as half:
        half.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        assert _read_all(half) == b""  # half the headers: closed
    with _connect(small_server) as slow:
        slow.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
        answer = _read_all(slow)  # the body never completes: 408, then closed
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1.5 s" in answer
    assert "no request within 1.5 s" in server_log.text()
    assert httpx.get(f"{small_server.url}/health").status_code == 200


def test_a_client_leaving_mid_upload_is_an_info_line(small_server: RunningServer, server_log: _Lines) -> None:
    with _connect(small_server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 5000\r\n\r\n{"messages": ['
        )
    _until(lambda: "went away while sending its request" in server_log.text(), "the server noticed")
    record = next(r for r in server_log.records if "went away" in r.getMessage())
    assert record.levelno == logging.INFO and record.exc_info is None
    assert not [r for r in server_log.records if r.levelno >= logging.ERROR], server_log.text()

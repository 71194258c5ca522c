"""`backend: vllm`: the command line and environment handed to vLLM, and `start_server(ServeConfig(backend="vllm"))`
end to end against a stand-in for vLLM's server (no vLLM on CPU machines): it parses the same flags, loads
`--middleware` the way vLLM's `build_app` does, and answers with what it was given."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from huarizo.formats.templates import get_template
from huarizo.serve import ServeConfig, ServeError, start_server
from huarizo.serve.model import served_fingerprint
from huarizo.serve.vllm import vllm_command

HUARIZO = [sys.executable, "-c", "from huarizo.formats.cli import main; raise SystemExit(main())"]

STAND_IN = '''
"""A stand-in for vllm.entrypoints.openai.api_server: same flags, middleware loaded as vLLM's build_app does."""
import argparse, importlib, inspect, json, os

import uvicorn
from fastapi import FastAPI, Request

p = argparse.ArgumentParser()
for flag in ["--model", "--host", "--port", "--dtype", "--served-model-name", "--max-num-seqs", "--max-model-len",
             "--chat-template"]:
    p.add_argument(flag)
p.add_argument("--middleware", action="append", default=[])
args = p.parse_args()
app = FastAPI()


@app.get("/health")
async def health():
    return {}


@app.get("/v1/models")
async def models():
    return {"object": "list", "data": [{"id": args.served_model_name, "object": "model", "root": args.model}]}


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    seen = {"stop": body.get("stop"), "key": os.environ.get("VLLM_API_KEY"), "dtype": args.dtype,
            "template": open(args.chat_template).read() if args.chat_template else None}
    message = {"role": "assistant", "content": json.dumps(seen)}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": args.served_model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


for middleware in args.middleware:
    module_path, name = middleware.rsplit(".", 1)
    imported = getattr(importlib.import_module(module_path), name)
    if inspect.isclass(imported):
        app.add_middleware(imported)
    else:
        app.middleware("http")(imported)
uvicorn.run(app, host=args.host, port=int(args.port), log_level="warning")
'''


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    pkg = root / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for folder in (root / "vllm", root / "vllm" / "entrypoints", pkg):
        (folder / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(textwrap.dedent(STAND_IN))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.setenv("HUARIZO_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    return root


def test_vllm_command_line(tiny_model_dir: Path) -> None:
    cfg = ServeConfig(model=str(tiny_model_dir), port=9001, api_keys=["k"], model_name="m", backend="vllm")
    cmd = vllm_command(cfg, "/tmp/t.jinja")
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    pairs = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert pairs["--model"] == str(tiny_model_dir) and pairs["--served-model-name"] == "m"
    assert pairs["--chat-template"] == "/tmp/t.jinja" and pairs["--port"] == "9001" and pairs["--dtype"] == "auto"
    assert pairs["--middleware"] == "huarizo.serve.vllm.VLLMMiddleware"
    assert "k" not in cmd, "the API key is on the command line (visible to every user of the machine)"


def test_start_server_runs_vllm_with_huarizos_template_key_stops_and_fingerprint(
    fake_vllm: Path, tiny_model_dir: Path
) -> None:
    cfg = ServeConfig(model=str(tiny_model_dir), port=0, api_keys=["secret"], model_name="m", backend="vllm")
    with start_server(cfg) as server:
        assert server.model_name == "m" and server.port != 0
        card = httpx.get(f"{server.base_url}/models").json()["data"][0]
        assert card["id"] == "m"
        assert card["fingerprint"] == served_fingerprint(str(tiny_model_dir), "auto", "alpaca")
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["END"]}
        seen = json.loads(
            httpx.post(f"{server.base_url}/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        )
    alpaca = get_template("alpaca")
    assert seen["stop"] == ["END", *[s for s in alpaca.stop_strings(eos="</s>") if s != "END"]]
    assert "### Instruction:" in seen["stop"] and seen["key"] == "secret" and seen["dtype"] == "auto"
    assert seen["template"] == alpaca.to_jinja()  # type: ignore[attr-defined]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url}/models", timeout=2)  # stopped with the context


def test_vllm_takes_one_key(fake_vllm: Path, tiny_model_dir: Path) -> None:
    cfg = ServeConfig(model=str(tiny_model_dir), port=0, api_keys=["a", "b"], backend="vllm")
    with pytest.raises(ServeError, match="one API key"):
        start_server(cfg)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_backend_says_so(tiny_model_dir: Path) -> None:
    """Never the built-in engine in vLLM's place: the Python API and the command both refuse, in one line."""
    with pytest.raises(ServeError, match="needs vLLM"):
        start_server(ServeConfig(model=str(tiny_model_dir), port=0, backend="vllm"))
    out = subprocess.run(
        [*HUARIZO, "serve", "--model", str(tiny_model_dir), "--backend", "vllm"], capture_output=True, text=True
    )
    assert out.returncode == 1 and "needs vLLM" in out.stderr and "Traceback" not in out.stderr

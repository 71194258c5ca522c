"""`backend: vllm`: vLLM's OpenAI server for GPU machines, started with what Huarizo's engine would use.

vLLM gets the model folder, host, port, dtype, served name, batch size, context length, Huarizo's template as its
chat template (`ChatTemplate.to_jinja()`, the prompts the model was trained on) and the API key (through
`VLLM_API_KEY`, never on the command line). `VLLMMiddleware`, which vLLM loads with `--middleware`, adds what vLLM
does not know: the template's stop strings to every chat request, and the model's `fingerprint` to `/v1/models`
(the judge's and datagen's cache protection reads it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

from huarizo.serve.config import ServeConfig
from huarizo.serve.server import ServeError, Server, warn_if_exposed

ENV = "HUARIZO_VLLM"
"""The environment variable that hands `VLLMMiddleware` its settings (JSON: model, fingerprint, stop)."""
MIDDLEWARE = "huarizo.serve.vllm.VLLMMiddleware"


def vllm_command(cfg: ServeConfig, chat_template: str | None = None) -> list[str]:
    """The command line that runs vLLM's OpenAI server for `cfg` (no key: see `vllm_launch`)."""
    from huarizo.formats.models import resolve_model
    from huarizo.serve.model import default_model_name

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(cfg.model)]
    cmd += ["--host", cfg.host, "--port", str(cfg.port), "--dtype", cfg.dtype]
    cmd += ["--served-model-name", cfg.model_name or default_model_name(cfg.model)]
    cmd += ["--max-num-seqs", str(cfg.max_batch_size), "--middleware", MIDDLEWARE]
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if chat_template:
        cmd += ["--chat-template", chat_template]
    return cmd


def vllm_launch(cfg: ServeConfig) -> tuple[list[str], dict[str, str]]:
    """The command and environment of vLLM's server for `cfg`: its template written as Jinja into the cache, the
    key in `VLLM_API_KEY`, the middleware's settings in `HUARIZO_VLLM`."""
    if importlib.util.find_spec("vllm") is None:
        raise ServeError("--backend vllm needs vLLM on a GPU machine: pip install 'huarizo-serve[vllm]'")
    if len(cfg.api_keys) > 1:
        raise ServeError("--backend vllm takes one API key (vLLM checks a single key)")
    from huarizo.formats import cache_dir, chat_template_for
    from huarizo.formats.models import load_tokenizer
    from huarizo.serve.model import default_model_name, served_fingerprint, served_template

    tokenizer = load_tokenizer(cfg.model)
    template = served_template(cfg, tokenizer)
    fingerprint = served_fingerprint(cfg.model, cfg.dtype, template.name)
    jinja = None
    exported = chat_template_for(template, tokenizer)  # with the BOS the model was trained with
    if exported is not None:
        path = cache_dir() / "vllm" / f"{template.name}-{fingerprint}.jinja"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(exported)
        jinja = str(path)
    settings = {
        "model": cfg.model_name or default_model_name(cfg.model),
        "fingerprint": fingerprint,
        "stop": template.stop_strings(eos=tokenizer.eos_token),
    }
    env = {**os.environ, ENV: json.dumps(settings)}
    env.pop("VLLM_API_KEY", None)
    if cfg.api_keys:
        env["VLLM_API_KEY"] = cfg.api_keys[0]
    return vllm_command(cfg, jinja), env


def exec_vllm(cfg: ServeConfig) -> int:
    """Replace this process by vLLM's OpenAI server (`huarizo serve --backend vllm`)."""
    warn_if_exposed(cfg)
    cmd, env = vllm_launch(cfg)
    os.execve(cmd[0], cmd, env)
    return 0  # pragma: no cover


class VLLMServer(Server):
    """vLLM's OpenAI server in a child process (`start_server` with `backend: vllm`)."""

    def __init__(self, cfg: ServeConfig) -> None:
        warn_if_exposed(cfg)
        if cfg.port == 0:  # vLLM needs a number: take a free one
            from huarizo.formats.llm import free_port

            cfg = cfg.model_copy(update={"port": free_port(cfg.host)})
        self.cfg, self.port = cfg, cfg.port
        self.command, self._env = vllm_launch(cfg)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 900.0) -> VLLMServer:
        """Start vLLM; returns once its `/health` answers (loading a model on a GPU takes a while)."""
        from huarizo.formats.llm import ServerStartError, wait_until_ready

        self._proc = subprocess.Popen(self.command, env=self._env)
        try:
            wait_until_ready(self._proc, self.url, timeout=timeout, what="vLLM")
        except ServerStartError as exc:
            raise ServeError(str(exc)) from None
        return self

    def stop(self) -> None:
        """Stop vLLM (SIGTERM, then SIGKILL after 30 s)."""
        from huarizo.formats.llm import stop_process

        stop_process(self._proc)


class VLLMMiddleware:
    """ASGI middleware for vLLM's app (`--middleware huarizo.serve.vllm.VLLMMiddleware`): chat requests get the
    template's stop strings added to theirs; `/v1/models` gets the model's `fingerprint`. Settings: `HUARIZO_VLLM`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        settings = json.loads(os.environ.get(ENV) or "{}")
        self.model: str | None = settings.get("model")
        self.fingerprint: str | None = settings.get("fingerprint")
        self.stop: list[str] = list(settings.get("stop") or [])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
            scope, receive = await self._add_stops(scope, receive)
        elif scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/v1/models":
            send = self._fingerprinted(send)
        await self.app(scope, receive, send)

    async def _add_stops(self, scope: Any, receive: Any) -> tuple[Any, Any]:
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let vLLM see it
                return scope, _replay([message], receive)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        with contextlib.suppress(ValueError):
            data = json.loads(body)
            if isinstance(data, dict) and self.stop:
                stop = data.get("stop") or []
                stop = [stop] if isinstance(stop, str) else list(stop)
                data["stop"] = list(dict.fromkeys([*stop, *self.stop]))
                body = json.dumps(data).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        return scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive)

    def _fingerprinted(self, send: Any) -> Any:
        start: dict[str, Any] = {}
        body = b""

        async def wrapped(message: Any) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            if start.get("status") == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    data = json.loads(body)
                    for card in data["data"]:
                        if card.get("id") == self.model and self.fingerprint:
                            card["fingerprint"] = self.fingerprint
                    body = json.dumps(data).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return wrapped


def _replay(messages: list[Any], receive: Any) -> Any:
    """A `receive` that returns `messages` first, then reads on."""
    pending = list(messages)

    async def replayed() -> Any:
        return pending.pop(0) if pending else await receive()

    return replayed

"""huarizo-serve: an OpenAI-compatible server with continuous batching, and a CLI chat, for trained models.

Start a server from Python (tests, pipelines) and give its URL to openai or litellm::

    with start_server(ServeConfig(model="tiny", port=0)) as server:
        print(server.base_url, server.model_name)
"""

from huarizo.serve.config import DEFAULT_TEMPLATE, ChatConfig, ServeConfig
from huarizo.serve.engine import (
    Delta,
    Engine,
    EngineBusy,
    EngineError,
    Finished,
    SamplingParams,
    TokenLogprob,
)
from huarizo.serve.model import ServedModel
from huarizo.serve.server import RunningServer, ServeError, Server, serve, start_server

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_TEMPLATE",
    "ChatConfig",
    "Delta",
    "Engine",
    "EngineBusy",
    "EngineError",
    "Finished",
    "RunningServer",
    "SamplingParams",
    "ServeConfig",
    "ServeError",
    "ServedModel",
    "Server",
    "TokenLogprob",
    "serve",
    "start_server",
]

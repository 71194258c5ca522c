"""huarizo-formats: the typed schemas, IO, conversion, templates, masking and config base every package shares."""

from huarizo.formats.config import ConfigError, HuarizoConfig
from huarizo.formats.convert import content_id, convert, from_conversation, to_conversations
from huarizo.formats.endpoint import EndpointConfig
from huarizo.formats.errors import ConversionError, HuarizoError, RecordError
from huarizo.formats.io import JsonlAppender, load, read_records, write_records
from huarizo.formats.masking import (
    IGNORE_INDEX,
    MaskError,
    TokenizedSample,
    tokenize_conversation,
    tokenize_conversations,
)
from huarizo.formats.results import StageResult
from huarizo.formats.schemas import (
    FORMATS,
    AlpacaRecord,
    Conversation,
    Message,
    OpenAIConversation,
    OpenAIMessage,
    SeedTask,
    ShareGPTConversation,
    ShareGPTTurn,
)
from huarizo.formats.templates import ChatTemplate, Segment, Template, TemplateError, get_template, list_templates

__version__ = "0.1.0"
__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "AlpacaRecord",
    "ChatTemplate",
    "ConfigError",
    "Conversation",
    "ConversionError",
    "EndpointConfig",
    "HuarizoConfig",
    "HuarizoError",
    "JsonlAppender",
    "MaskError",
    "Message",
    "OpenAIConversation",
    "OpenAIMessage",
    "RecordError",
    "SeedTask",
    "Segment",
    "ShareGPTConversation",
    "ShareGPTTurn",
    "StageResult",
    "Template",
    "TemplateError",
    "TokenizedSample",
    "content_id",
    "convert",
    "from_conversation",
    "get_template",
    "list_templates",
    "load",
    "read_records",
    "to_conversations",
    "tokenize_conversation",
    "tokenize_conversations",
    "write_records",
]

"""huarizo-formats: the formats every package shares, and the `huarizo` command's root.

This module is formats' public surface; sibling packages import nothing else from it but its three sub-packages:

- the formats proper: record schemas (`schemas`), reading and writing them (`io`), conversion (`convert`),
  evaluation sets (`evalsets`: questions and answers in the Vicuna-80, MT-bench, AlpacaEval and Self-Instruct
  layouts), prompt templates (`templates`), tokenization with verified loss masks (`masking`), and exact
  ROUGE-L (`rouge`);
- the base every command builds on: configs (`config`), options generated from them (`cli`), progress bars
  (`progress`), user-facing errors (`errors`), the endpoint config for models reached over HTTP (`endpoint`), what
  a stage returns (`results`);
- behind extras: `huarizo.formats.llm` (the litellm client), `huarizo.formats.models` (model references and
  loading, the tiny test model) and `huarizo.formats.testing` (test stand-ins).
"""

from huarizo.formats.cli import add_config_options, add_set_option, config_from_args, main
from huarizo.formats.config import ConfigError, HuarizoConfig, apply_overrides, cache_dir, config_classes
from huarizo.formats.convert import content_id, convert, from_conversation, to_conversations
from huarizo.formats.endpoint import EndpointConfig
from huarizo.formats.errors import ConversionError, HuarizoError, RecordError
from huarizo.formats.evalsets import (
    Answer,
    Question,
    QuestionSet,
    load_answer_files,
    load_answers,
    load_questions,
    load_references,
    text_key,
)
from huarizo.formats.io import (
    JsonlAppender,
    RawRecord,
    atomic_file,
    atomic_folder,
    iter_raw,
    load,
    parse_record,
    read_records,
    write_json_atomic,
    write_records,
    write_text_atomic,
)
from huarizo.formats.masking import (
    IGNORE_INDEX,
    MaskError,
    TokenizedSample,
    char_limit,
    tokenize_conversation,
    tokenize_conversations,
)
from huarizo.formats.progress import ProgressBar
from huarizo.formats.results import StageResult
from huarizo.formats.rouge import (
    CJKTokenizer,
    DefaultTokenizer,
    RougeTokenizer,
    RougeTokenizerName,
    lcs_length,
    lcs_masks,
    lcs_with_masks,
    rouge_l,
    rouge_l_f1,
    rouge_tokenizer,
)
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
from huarizo.formats.templates import (
    ChatTemplate,
    Segment,
    Template,
    TemplateError,
    chat_messages,
    chat_template_for,
    end_of_turn_ids,
    get_template,
    list_templates,
    template_for_tokenizer,
)

__version__ = "0.1.0"
__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "AlpacaRecord",
    "Answer",
    "CJKTokenizer",
    "ChatTemplate",
    "ConfigError",
    "Conversation",
    "ConversionError",
    "DefaultTokenizer",
    "EndpointConfig",
    "HuarizoConfig",
    "HuarizoError",
    "JsonlAppender",
    "MaskError",
    "Message",
    "OpenAIConversation",
    "OpenAIMessage",
    "ProgressBar",
    "Question",
    "QuestionSet",
    "RawRecord",
    "RecordError",
    "RougeTokenizer",
    "RougeTokenizerName",
    "SeedTask",
    "Segment",
    "ShareGPTConversation",
    "ShareGPTTurn",
    "StageResult",
    "Template",
    "TemplateError",
    "TokenizedSample",
    "add_config_options",
    "add_set_option",
    "apply_overrides",
    "atomic_file",
    "atomic_folder",
    "cache_dir",
    "char_limit",
    "chat_messages",
    "chat_template_for",
    "config_classes",
    "config_from_args",
    "content_id",
    "convert",
    "end_of_turn_ids",
    "from_conversation",
    "get_template",
    "iter_raw",
    "lcs_length",
    "lcs_masks",
    "lcs_with_masks",
    "list_templates",
    "load",
    "load_answer_files",
    "load_answers",
    "load_questions",
    "load_references",
    "main",
    "parse_record",
    "read_records",
    "rouge_l",
    "rouge_l_f1",
    "rouge_tokenizer",
    "template_for_tokenizer",
    "text_key",
    "to_conversations",
    "tokenize_conversation",
    "tokenize_conversations",
    "write_json_atomic",
    "write_records",
    "write_text_atomic",
]

"""huarizo-datagen: instruction data generation (Self-Instruct, Alpaca), filtering and ShareGPT cleaning."""

from huarizo.datagen.config import (
    AlpacaConfig,
    CleanConfig,
    DatagenConfig,
    FilterConfig,
    IdentityConfig,
    SelfInstructConfig,
    TeacherConfig,
)
from huarizo.datagen.filters import FilterFileResult, FilterResult, RecordFilter, filter_file
from huarizo.datagen.generate import DatagenResult, FailedRequest, RoundFailed, default_seeds, load_seeds, run
from huarizo.datagen.identity import identity_conversations, write_identity
from huarizo.datagen.rouge import (
    Match,
    NoveltyIndex,
    novelty_filter,
)
from huarizo.datagen.sharegpt import (
    CleanFileResult,
    CleanResult,
    clean_conversations,
    clean_file,
    html_to_markdown,
)

__version__ = "0.1.0"
__all__ = [
    "AlpacaConfig",
    "CleanConfig",
    "CleanFileResult",
    "CleanResult",
    "DatagenConfig",
    "DatagenResult",
    "FailedRequest",
    "FilterConfig",
    "FilterFileResult",
    "FilterResult",
    "IdentityConfig",
    "Match",
    "NoveltyIndex",
    "RecordFilter",
    "RoundFailed",
    "SelfInstructConfig",
    "TeacherConfig",
    "clean_conversations",
    "clean_file",
    "default_seeds",
    "filter_file",
    "html_to_markdown",
    "identity_conversations",
    "load_seeds",
    "novelty_filter",
    "run",
    "write_identity",
]

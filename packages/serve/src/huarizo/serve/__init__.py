"""huarizo-serve: an OpenAI-compatible server and a CLI chat for trained models."""

__version__ = "0.1.0"

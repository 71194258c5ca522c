"""huarizo-datagen: instruction data generation (Self-Instruct, Alpaca), filtering and ShareGPT cleaning."""

__version__ = "0.1.0"

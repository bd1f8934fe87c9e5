"""vitqbench: a deployment benchmark for quantized vision transformers."""

__version__ = "0.1.0"

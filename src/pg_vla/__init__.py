"""pg-vla: the pi0 vision-language-action model in PyTorch."""

__version__ = "0.1.0"

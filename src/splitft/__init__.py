"""SplitFT: adaptive federated split learning for LLM fine-tuning with LoRA."""

__version__ = "0.1.0"

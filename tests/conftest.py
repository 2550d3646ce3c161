"""Test-wide settings: no test ever reaches the network; helpers live in ``_models.py``."""

import os

# Set before transformers/huggingface_hub are imported by any test module: a hub name that
# is not cached must fail at once instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

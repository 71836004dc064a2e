"""tuneloop: a self-hosted customer-service chat bot that improves from its own conversations.

Data flows one way: chat (bot/) -> feedback (feedback/) -> dataset snapshot -> fine-tune job ->
candidate version -> gates (retrain/) -> promotion (registry/) -> serving (bot/, engine/). This package
is both the ground floor (``tuneloop.core``: settings, database, errors, accounts) and the composition
root (``app``, ``cli``, ``ops``, ``schema``), the only place that imports every package. See
docs/ARCHITECTURE.md and tests/test_layers.py.
"""

import os

# Nothing in tuneloop may call out to the internet: models come from local files only.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"

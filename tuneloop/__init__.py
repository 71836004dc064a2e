"""tuneloop: a self-hosted customer-service chat bot that improves from its own conversations.

Data flows one way: chat (bot/) -> feedback (feedback/) -> dataset snapshot -> fine-tune job ->
candidate version -> gates -> promotion (retrain/) -> serving (bot/). This package holds what every
stage shares: the settings object, the database, accounts and the audit log, the app factory and the CLI.
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

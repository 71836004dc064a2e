"""The model engines (floor 1): load a model version and answer with it.

``protocol`` is what every engine speaks (``Engine``, ``SamplingParams``, ``Completion``); ``local``
serves with transformers + peft on this machine, ``upstream`` relays to an OpenAI-compatible server
(vLLM); ``backends`` picks one by ``settings.serving_backend``. ``prompting`` lays out a conversation
for a model (training uses it too), ``modelstore`` unpacks the bundled SmolLM2 once, ``embeddings``
is the bundled MiniLM. Nothing here knows of versions' lifecycle, conversations or training data.
"""

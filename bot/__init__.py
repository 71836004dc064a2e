"""Serving: the model runtime, the OpenAI-compatible chat API, conversations and ratings capture.

bot/ knows nothing of training. It serves whichever model version the production pointer names,
and logs every turn with the version that produced it.
"""

"""The ``tuneloop`` command: small sub-commands over the same service functions the API uses."""

"""llm-proxy: a fast reverse proxy for OpenAI-compatible APIs.

The public surface: the ``llm-proxy`` command, the YAML settings (:mod:`proxy.config`) and
:func:`proxy.app.create_app` for embedding. Everything else may change.
"""

__version__ = "0.1.0"

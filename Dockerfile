# llm-proxy container: slim Python, non-root, config mounted at /etc/llm-proxy/config.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LLM_PROXY_CONFIG=/etc/llm-proxy/config.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin proxy

COPY config.example.yaml /etc/llm-proxy/config.yaml

USER proxy
EXPOSE 8080
# The port comes from the config's server.port; LLM_PROXY_PORT tells the health check (and
# config.example.yaml's server.port) which one. Keep them equal when you change either.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LLM_PROXY_PORT', '8080'), timeout=2)"

ENTRYPOINT ["llm-proxy"]
# Listen on every interface of the container; the port is the config's.
CMD ["--host", "0.0.0.0"]

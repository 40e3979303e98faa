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
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"

ENTRYPOINT ["llm-proxy"]
CMD ["--host", "0.0.0.0", "--port", "8080"]

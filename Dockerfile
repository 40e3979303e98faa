# llm-proxy container. Build stage: wheels for the proxy and every dependency, installed into a
# virtualenv. Runtime stage: slim Python, that virtualenv, a non-root user, nothing else.
# tests/core/test_container.py runs the build stage's RUN the same way (offline) and the image's
# CMD and HEALTHCHECK against the result; hadolint lints this file in the suite.
# Python 3.11: measured side by side with 3.13 (with eager tasks) through nginx + wrk, 3.11 was
# as fast or faster (3.13 at 0.96x, docs/benchmarks.md), so the image keeps the faster one.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/llm-proxy WHEELS=/wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --wheel-dir "$WHEELS" . \
    && python -m venv "$VENV" \
    && "$VENV/bin/pip" install --no-index --find-links "$WHEELS" llm-proxy


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/llm-proxy/bin:$PATH \
    LLM_PROXY_CONFIG=/etc/llm-proxy/config.yaml
# A user of its own: "proxy" is already taken by Debian's base-passwd in every Debian image.
RUN useradd --system --user-group --uid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin llmproxy
COPY --from=build /opt/llm-proxy /opt/llm-proxy
COPY deploy/config.yaml /etc/llm-proxy/config.yaml

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8080
# The proxy drains on SIGTERM: stops accepting, lets requests and streams in flight finish
# (server.shutdown_timeout_s), hands running jobs back to the queue, exits 0.
STOPSIGNAL SIGTERM
# The port comes from the config's server.port (${LLM_PROXY_PORT:-8080}): the health check asks
# the same LLM_PROXY_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LLM_PROXY_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["llm-proxy"]
# Listen on every interface of the container; the port is the config's.
CMD ["--host", "0.0.0.0"]

# Beacon server image. Point REDIS_URL at your Redis (or Redis Cluster with BEACON_REDIS_CLUSTER=1);
# without it the container starts a private Valkey under /data (AOF on) — mount a volume there.
FROM python:3.11-slim-bookworm AS build
# durable-rules builds a C extension from source.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY beacon beacon
COPY cep cep
COPY rules rules
COPY connectors connectors
COPY api api
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 beacon && mkdir /data && chown beacon /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER beacon
ENV BEACON_HOST=0.0.0.0 BEACON_PORT=8080 BEACON_DATA_DIR=/data
EXPOSE 8080
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
CMD ["beacon", "serve"]

# Beacon server image. Point REDIS_URL at your Redis (or Redis Cluster with BEACON_REDIS_CLUSTER=1);
# without it the container starts a private Valkey under /data (AOF on) — mount a volume there.
# Untested here: the machine this is developed on has no Docker engine. CI builds and smoke-starts the
# same wheel outside Docker (.ci/run).
FROM python:3.11-slim-bookworm AS build
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
# 8080: `beacon serve` (API, /metrics, /healthz); 8081: `beacon worker` and 8082: `beacon connectors`
# (/metrics and /healthz only; BEACON_OPS_PORT changes them).
EXPOSE 8080 8081 8082
VOLUME ["/data"]
# One check for every role the image runs (CMD ["beacon", "worker"] ...): it asks 8080, then 8081, then 8082,
# and the first that answers decides; 503 means stalled processing too, not only a dead socket. Exit 0 or 1.
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 CMD ["beacon", "healthcheck"]
CMD ["beacon", "serve"]

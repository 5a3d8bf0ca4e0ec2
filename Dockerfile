# otel-bridge: slim, non-root, with a health check.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY otel_bridge ./otel_bridge
# The versions the test suite last passed with (./scripts/lock), not whatever was released this morning.
RUN pip install --no-cache-dir --prefix=/install -c constraints.txt .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /data --create-home bridge
USER bridge
WORKDIR /data
ENV OTEL_BRIDGE_HOST=0.0.0.0 \
    OTEL_BRIDGE_PORT=4380 \
    OTEL_BRIDGE_STATE=/data/otel-bridge.db \
    OTEL_BRIDGE_DEAD_LETTER=/data/dead-letter.jsonl \
    OTEL_BRIDGE_SPAN_DEAD_LETTER=/data/dead-spans.jsonl \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 4380
# Liveness (/healthz), not readiness: unhealthy is what a supervisor (Swarm) restarts for, and a restart
# mends a loop of the bridge's that ended or hangs, never a backend or a store that is away (which
# /readyz reports: restarting the bridge through a backend outage lost the batches sent meanwhile).
# Asks the port and scheme the bridge was given (OTEL_BRIDGE_PORT, OTEL_BRIDGE_TLS_CERTFILE), not 4380 over
# plain HTTP whatever it listens on; a few lines of Python, not the CLI and all its imports every 10 s.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, ssl, sys, urllib.request as r; tls = bool(os.environ.get('OTEL_BRIDGE_TLS_CERTFILE')); url = ('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('OTEL_BRIDGE_PORT', '4380') + '/healthz'; sys.exit(0 if r.urlopen(url, timeout=2, context=ssl._create_unverified_context() if tls else None).status == 200 else 1)"]
ENTRYPOINT ["otel-bridge"]
CMD ["serve"]

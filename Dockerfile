# otel-bridge: slim, non-root, with a health check.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY otel_bridge ./otel_bridge
RUN pip install --no-cache-dir --prefix=/install .

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
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4380/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["otel-bridge"]
CMD ["serve"]

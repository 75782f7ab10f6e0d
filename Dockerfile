# streamwatch server image: the bundled model, no PyTorch, no build tools, a non-root user.
#   docker build -t streamwatch .
#   docker run -p 8000:8000 -v streamwatch-data:/data streamwatch

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir service \
    && touch service/__init__.py \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall -y streamwatch
COPY service ./service
# sympy (and mpmath) come with onnxruntime for its model tools, not for inference; pip and
# setuptools are not needed to run. Leaving them out saves ~45 MB.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip uninstall -y sympy mpmath setuptools pip \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /app streamwatch \
    && mkdir -p /app/.numba-cache /data && chown streamwatch /app/.numba-cache /data
COPY --from=build /opt/venv /opt/venv
COPY models /app/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8000 \
    STREAMWATCH_MODEL__DIR=/app/models \
    STREAMWATCH_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/app/.numba-cache
VOLUME /data
WORKDIR /app
USER streamwatch
# A round's compiled passes (service/compiled.py, service/passes.py) are compiled here, for the
# bundled model, once, into numba's cache:
# start-up loads them (a host whose CPU differs from the builder's compiles them again at its
# first start, about 5 s). A read-only root file system needs NUMBA_CACHE_DIR on a volume.
RUN streamwatch compile
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
# SIGTERM: uvicorn drains, the engine finishes its queue and the state is snapshotted.
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "exec streamwatch serve --host \"${STREAMWATCH_SERVER__HOST:-0.0.0.0}\" --port \"$PORT\""]

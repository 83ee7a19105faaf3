# One image for every service of compose.yaml: the workers (any pool), Flower and the demo.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, in its own layer: the CPU build by default (compose's worker-gpu passes a CUDA
# index). The pin matches pyproject's torch extra.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md ./
COPY taskpool/ taskpool/
COPY workers/ workers/
RUN pip install ".[torch]"

COPY config/ config/

RUN useradd --create-home --uid 10001 taskpool \
    && mkdir -p /app/.taskpool \
    && chown taskpool /app/.taskpool
USER taskpool

# config/ (Celery settings) and workers/ (the app) are found from here.
ENV PYTHONPATH=/app \
    TASKPOOL_BROKER_URL=redis://redis:6379/0
EXPOSE 9808 5555
CMD ["taskpool", "--help"]

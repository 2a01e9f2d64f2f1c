# imagebot container. CPU by default; for NVIDIA GPUs build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t imagebot:cuda .
# and run with --gpus all (see docker-compose.yml).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models \
    OMP_WAIT_POLICY=PASSIVE \
    IMAGEBOT_CONFIG=/app/config.toml

RUN useradd --create-home --uid 10001 imagebot
WORKDIR /app

# Dependencies first: this layer is reused until pyproject.toml / constraints.txt change.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p bot cogs && touch bot/__init__.py cogs/__init__.py \
    && pip install --extra-index-url "$TORCH_INDEX" -c constraints.txt . \
    && rm -rf bot cogs

COPY bot bot
COPY cogs cogs
COPY labels labels
COPY config.toml config.toml
RUN pip install --no-deps . && mkdir -p /models /app/data && chown -R imagebot:imagebot /models /app/data

USER imagebot
# Model weights (Hugging Face cache) and the bot's data (Chroma, heartbeat) outlive the container.
VOLUME ["/models", "/app/data"]

HEALTHCHECK --interval=60s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-m", "bot", "healthcheck"]

CMD ["python", "-m", "bot", "run"]

# imagebot container images: one Dockerfile, two torch builds (docs/install.md has sizes).
#   docker build -t imagebot:cpu .                          # CPU-only torch from download.pytorch.org/whl/cpu
#   docker build --build-arg TORCH=cuda -t imagebot:cuda .  # PyPI's torch 2.14.1 with its CUDA 13.0 libraries
# Run the CUDA image with --gpus all (NVIDIA driver >= 580 on the host, NVIDIA Container Toolkit); see
# docker-compose.yml. TORCH also takes a PyTorch index name (cu126, cu128, cu130, ...) or an index URL.
# The build stage installs the dependencies into /opt/venv; the runtime stage is the slim base plus
# that venv and the bot's code, label sets and config.toml in /app: no pip cache, no build/ or
# egg-info (the bot is run from /app, not installed), no test tools.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PROGRESS_BAR=off \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# torch first, in its own layer (the largest one; reused until constraints.txt changes).
COPY constraints.txt ./
RUN set -eu; \
    pins="$(sed -nE 's/^(torch(vision)?==[^[:space:]#;]+).*/\1/p' constraints.txt | tr '\n' ' ')"; \
    case "$TORCH" in \
      cuda|pypi) index="" ;; \
      cpu|cu[0-9]*|rocm[0-9]*|xpu) index="https://download.pytorch.org/whl/$TORCH" ;; \
      http://*|https://*) index="$TORCH" ;; \
      *) echo "TORCH=$TORCH: expected cpu, cuda, a PyTorch index name (cu128) or an index URL" >&2; exit 2 ;; \
    esac; \
    echo "torch: $pins from ${index:-PyPI}"; \
    pip install -c constraints.txt ${index:+--index-url "$index"} $pins

# The other runtime dependencies (pyproject's [project] dependencies; no test extras): reused until
# pyproject.toml changes. The bot's own code is not installed here; the runtime stage copies it.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    OMP_WAIT_POLICY=PASSIVE \
    IMAGEBOT_CONFIG=/app/config.toml \
    PYTHONPATH=/app
RUN useradd --create-home --uid 10001 imagebot
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY bot bot
COPY cogs cogs
COPY labels labels
COPY config.toml config.toml
RUN python -m compileall -q bot cogs \
    && python -c "import torch, bot.cli; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
    && mkdir -p /models /app/data && chown imagebot:imagebot /models /app/data

USER imagebot
# Model weights (Hugging Face cache, ~2.2 GB after the first start) and the bot's data (Chroma,
# heartbeat) outlive the container.
VOLUME ["/models", "/app/data"]

HEALTHCHECK --interval=60s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "-m", "bot", "healthcheck"]

CMD ["python", "-m", "bot", "run"]

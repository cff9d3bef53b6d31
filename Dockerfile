# CUDA production image of deepseek_serve (vLLM's CUDA build underneath).
#   docker build -t deepseek-serve .
#   docker run --gpus all -p 8000:8000 -v ~/.cache/huggingface:/home/serve/.cache/huggingface \
#       -e MODEL_SIZE=6.7b deepseek-serve
# MODEL_SIZE picks the instruct checkpoint (6.7b or 33b); PORT and LOG_LEVEL work as in the
# original deployment guide; every other setting is DEEPSEEK_SERVE_<NAME> or a --flag.
# Multi-GPU: add --tensor-parallel-size N and --ipc=host (NCCL needs shared memory).
# docker-compose.yml and configs/kubernetes/ run this image with monitoring.
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

WORKDIR /opt/deepseek_serve
COPY pyproject.toml README.md ./
COPY deepseek_serve ./deepseek_serve
COPY configs ./configs
# vllm is already in the base image at the pinned version; this adds only our thin layer.
# The cache directories exist (owned by serve) so that volumes mounted there are writable.
RUN python3 -m pip install --no-cache-dir ".[cuda]" \
    && useradd --create-home --uid 10001 serve \
    && mkdir -p /home/serve/.cache/huggingface /home/serve/.cache/deepseek_serve \
    && chown -R serve:serve /home/serve/.cache

USER serve
ENV HF_HOME=/home/serve/.cache/huggingface \
    DEEPSEEK_SERVE_CACHE_DIR=/home/serve/.cache/deepseek_serve \
    DEEPSEEK_SERVE_HOST=0.0.0.0 \
    MODEL_SIZE=6.7b \
    PORT=8000 \
    LOG_LEVEL=info
EXPOSE 8000
# Loading a 33B checkpoint takes minutes: a long start period before failures count.
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; port = os.environ.get('DEEPSEEK_SERVE_PORT') or os.environ.get('PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status != 200)"]
# No default flags: a flag would override MODEL_SIZE / DEEPSEEK_SERVE_MODEL from the environment.
ENTRYPOINT ["deepseek-serve"]

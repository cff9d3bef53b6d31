# CUDA production image of deepseek_serve (vLLM's CUDA build underneath).
#   docker build -t deepseek-serve .
#   docker run --gpus all -p 8000:8000 -v ~/.cache/huggingface:/home/serve/.cache/huggingface \
#       -e MODEL_SIZE=6.7b deepseek-serve
# Multi-GPU: add --tensor-parallel-size N and --ipc=host (NCCL needs shared memory).
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

WORKDIR /opt/deepseek_serve
COPY pyproject.toml README.md ./
COPY deepseek_serve ./deepseek_serve
COPY configs ./configs
# vllm is already in the base image at the pinned version; this adds only our thin layer.
# The cache directories exist (owned by serve) so that volumes mounted there are writable.
RUN python3 -m pip install --no-cache-dir ".[cuda,ray]" \
    && useradd --create-home --uid 10001 serve \
    && mkdir -p /home/serve/.cache/huggingface /home/serve/.cache/deepseek_serve \
    && chown -R serve:serve /home/serve/.cache

USER serve
ENV HF_HOME=/home/serve/.cache/huggingface \
    DEEPSEEK_SERVE_CACHE_DIR=/home/serve/.cache/deepseek_serve \
    DEEPSEEK_SERVE_HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_SIZE=6.7b
EXPOSE 8000
# Loading a 33B checkpoint takes minutes: a long start period before failures count.
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; port = os.environ.get('DEEPSEEK_SERVE_PORT') or os.environ.get('PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status != 200)"]
# The deployment guide's names choose the checkpoint and port (MODEL_SIZE=6.7b|33b, PORT);
# --model / DEEPSEEK_SERVE_MODEL override them.
ENTRYPOINT ["deepseek-serve"]

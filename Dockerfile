# CUDA production image of deepseek_serve (vLLM's CUDA build underneath).
#   docker build -t deepseek-serve .
#   docker run --gpus all -p 8000:8000 -v ~/.cache/huggingface:/home/serve/.cache/huggingface \
#       deepseek-serve --model deepseek-coder-6.7b-instruct
# Multi-GPU: add --tensor-parallel-size N and --ipc=host (NCCL needs shared memory).
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

WORKDIR /opt/deepseek_serve
COPY pyproject.toml README.md ./
COPY deepseek_serve ./deepseek_serve
COPY configs ./configs
# vllm is already in the base image at the pinned version; this adds only our thin layer.
RUN python3 -m pip install --no-cache-dir ".[cuda,ray]" \
    && useradd --create-home --uid 10001 serve

USER serve
ENV HF_HOME=/home/serve/.cache/huggingface \
    DEEPSEEK_SERVE_CACHE_DIR=/home/serve/.cache/deepseek_serve \
    DEEPSEEK_SERVE_HOST=0.0.0.0 \
    DEEPSEEK_SERVE_PORT=8000
EXPOSE 8000
# Loading a 33B checkpoint takes minutes: a long start period before failures count.
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; port = os.environ.get('DEEPSEEK_SERVE_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status != 200)"]
ENTRYPOINT ["deepseek-serve"]
CMD ["--model", "deepseek-coder-6.7b-instruct"]

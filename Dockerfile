# The server's image: the web process (`python app.py`, the default command) and the
# generation workers (`python worker.py`) run the same code; compose.yaml runs both.
#
#   docker build -t sd-cpu-server .
#
# Build arguments:
#   BASE             the base image: python:3.11-slim (default), or any Debian/Ubuntu root
#                    without Python (python3 and python3-venv are then installed from apt),
#                    such as a `debootstrap bookworm` root brought in with `docker import`.
#   TORCH_INDEX_URL  where the torch wheel comes from: PyPI's torch for Linux is the CUDA
#                    build and pulls several GB of nvidia-* packages, so the default is
#                    PyTorch's CPU-only index. Wheels put in docker/wheels/ are offered beside it (see
#                    docker/README.md): scripts/docker-test.sh puts the host's CPU wheel
#                    there and passes TORCH_INDEX_URL=https://pypi.org/simple where
#                    download.pytorch.org cannot be reached.
# The build fails if any nvidia-* package got in. No build step reads .env: settings are
# given to the containers (compose.yaml's environment).
ARG BASE=python:3.11-slim

# --- Python, certificates, the user and its folders: shared by the stages below ------------
FROM ${BASE} AS python
# Extra CA certificates (*.crt in docker/ca-certificates/, none by default): for a network
# that inspects TLS, as where this was written; trusted by apt, pip, requests and httpx.
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
# models/ holds MODELS_DIR and the folders under it (LoRAs, tiny-random, the bf16 and
# OpenVINO caches); outputs/ is OUTPUT_DIR; state/ holds JOURNAL_PATH (the embedded queue's
# jobs); the Hugging Face cache is HF_HOME. Owned by the app user, so new named volumes
# mounted there start with that owner.
RUN set -eu; \
    missing=""; \
    command -v python3 >/dev/null 2>&1 && python3 -c "import venv, ensurepip" 2>/dev/null \
        || missing="python3 python3-venv"; \
    command -v update-ca-certificates >/dev/null 2>&1 || missing="$missing ca-certificates"; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    update-ca-certificates; \
    useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin app; \
    mkdir -p /app/models /app/outputs /app/state /home/app/.cache/huggingface; \
    chown -R app:app /app/models /app/outputs /app/state /home/app/.cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- The packages, in a venv; the wheels and pip's leftovers stay in this stage ------------
FROM python AS packages
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.txt /tmp/requirements.txt
COPY docker/wheels/ /tmp/wheels/
# torch first, at requirements.txt's pin, from the CPU index (a local +cpu wheel sorts above
# PyPI's plain release of the same version, so it wins where both are offered); the rest
# from PyPI then finds torch already satisfied.
RUN set -eu; \
    torch_pin=$(sed -n 's/^\(torch==[^ #]*\).*/\1/p' /tmp/requirements.txt); \
    test -n "$torch_pin"; \
    python3 -m venv /opt/venv; \
    pip install --index-url "$TORCH_INDEX_URL" --find-links /tmp/wheels "$torch_pin"; \
    pip install --find-links /tmp/wheels -r /tmp/requirements.txt; \
    if pip list 2>/dev/null | grep -i nvidia; then \
        echo "CUDA packages (above) got into the image: use a CPU torch index" >&2; exit 1; \
    fi; \
    python -c "import torch; assert not torch.cuda.is_available(); print('torch', torch.__version__)"

# --- The code, without docker/ (its wheels would add ~190 MB) -------------------------------
FROM python AS source
COPY . /src
RUN rm -rf /src/docker

# --- The image ------------------------------------------------------------------------------
# Settings and metadata first, the two big copies last: with the vfs storage driver (as
# here) every instruction copies the whole filesystem, so each step after them costs ~30 s.
FROM python
ENV HOST=0.0.0.0 \
    PORT=5000 \
    HF_HOME=/home/app/.cache/huggingface
WORKDIR /app
VOLUME ["/app/models", "/app/outputs", "/app/state", "/home/app/.cache/huggingface"]
EXPOSE 5000
# /health is 200 once the model is ready (or, with QUEUE_BACKEND=redis, once a worker is):
# a first start that downloads ~4 GB stays "starting"/"unhealthy" until then. Workers
# serve no HTTP: compose.yaml turns this check off for them.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '5000'), timeout=8)"
CMD ["python", "app.py"]
USER app
COPY --from=packages /opt/venv /opt/venv
# The code stays root's (read-only to the server); what it writes goes to the volumes.
COPY --from=source /src /app

# One image per role: `base` runs billing, provisioner and sessions; `warm_pool` adds Chromium.
#   docker build --target base -t browserfleet:latest .
#   docker build --target warm_pool -t browserfleet-warm-pool:latest .
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 browserfleet \
 && useradd --create-home --uid 10001 --gid 10001 browserfleet
WORKDIR /app
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir .
# Numeric, so Kubernetes can check runAsNonRoot without a runAsUser.
USER 10001:10001
EXPOSE 8000
# tini is PID 1: it forwards SIGTERM to the service (which drains) and reaps Chromium's children.
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m"]

FROM base AS warm_pool
USER root
# bubblewrap, nftables, iproute2 and util-linux build each browser's sandbox (local backend).
RUN apt-get update && apt-get install -y --no-install-recommends chromium-headless-shell fonts-liberation \
    bubblewrap nftables iproute2 util-linux \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
CMD ["services.warm_pool"]

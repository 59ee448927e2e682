# One image per role: `base` runs billing, provisioner and sessions; `warm_pool` adds Chromium.
FROM python:3.11-slim AS base
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 browserfleet
WORKDIR /app
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir .
USER browserfleet
ENTRYPOINT ["tini", "--", "python", "-m"]

FROM base AS warm_pool
USER root
RUN apt-get update && apt-get install -y --no-install-recommends chromium fonts-liberation \
 && rm -rf /var/lib/apt/lists/*
USER browserfleet
CMD ["services.warm_pool"]

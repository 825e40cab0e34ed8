# The Sluice broker: `docker build -t sluice .` then
#   docker run -p 8080:8080 -p 9070:9070 -v sluice-data:/data sluice
# (arguments after the image name are added to `sluice server`'s; see `sluice server --help`).
#
# BASE is any Debian-based image with python3 and its venv module: python:3.11-slim for
# users. The tests build one from Debian's packages, since no image registry is reachable on
# the machines Sluice is developed on (README, "Containers").
ARG BASE=python:3.11-slim

# Stage 1: the wheel, built from a copy of the package folders (nothing is written into the
# source tree, which can be read-only).
FROM ${BASE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk sdk
COPY broker broker
COPY ingress ingress
COPY subscriptions subscriptions
COPY connectors connectors
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --quiet --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: the wheel and its broker extra in a virtualenv, run by an unprivileged user.
FROM ${BASE}
COPY --from=wheel /wheels /wheels
RUN python3 -m venv /opt/sluice \
    && /opt/sluice/bin/pip install --quiet --no-cache-dir "$(ls /wheels/sluice-*.whl)[broker]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /data --create-home sluice
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER sluice
WORKDIR /data
VOLUME /data
EXPOSE 8080 9070
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=12 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9070/health', timeout=2)"]
# Listening beyond loopback, the log in the volume; `docker run IMAGE --flag ...` adds flags.
ENTRYPOINT ["sluice", "server", "--host", "0.0.0.0", "--data-dir", "/data"]

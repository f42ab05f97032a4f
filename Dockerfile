# The trainvitals server (FastAPI + SQLite or PostgreSQL + dashboard; no torch), as a non-root user with its
# data in the volume /data. Build:  docker build -t trainvitals-server .
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.10 and its venv module.
# PIP_OPTIONS: extra pip options, e.g. "--no-index --find-links http://127.0.0.1:8000/"
#   to build from a local wheelhouse without internet.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_OPTIONS=""
COPY . /src
RUN python3 -m venv /opt/trainvitals \
 && /opt/trainvitals/bin/pip install --no-cache-dir --disable-pip-version-check \
        ${PIP_OPTIONS} "/src[server,postgres]"

FROM ${BASE_IMAGE}
# Inside the container the server must listen on every interface so that the published port
# and the compose network reach it; publish it on 127.0.0.1 unless a view token is set.
ENV PATH=/opt/trainvitals/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRAINVITALS_HOST=0.0.0.0 \
    TRAINVITALS_PORT=8765 \
    TRAINVITALS_DATA_DIR=/data
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /data trainvitals \
 && mkdir /data && chown trainvitals:trainvitals /data
COPY --from=build /opt/trainvitals /opt/trainvitals
USER trainvitals
WORKDIR /data
VOLUME /data
EXPOSE 8765
# No curl in slim images: ask /healthz with the Python that is there anyway.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TRAINVITALS_PORT', '8765'), timeout=4)"]
CMD ["trainvitals", "serve"]

# arp-sensor container image for deploy/kubernetes (kernel headers come from the node's /lib/modules).
#   docker build -t registry.example/arp-sensor:0.1.0 . && docker push registry.example/arp-sensor:0.1.0
# Without a registry: scripts/build-image.sh (a Debian base from mmdebstrap, then this file, with podman).
ARG BASE_IMAGE=debian:12-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-bpfcc python3-venv python3-pip iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# pip's CA bundle during the build only (sites behind a TLS-inspecting proxy; scripts/build-image.sh passes the
# host's); not kept in the image.
ARG PIP_CERT
COPY pyproject.toml README.md /opt/arp-sensor/
COPY sensor /opt/arp-sensor/sensor
# sensor/bpf is a link to the top-level bpf/ (the C): copy its target too, or the package ships without it.
COPY bpf /opt/arp-sensor/bpf
# --system-site-packages: bcc is Debian's python3-bpfcc (the PyPI "bcc" is another project).
RUN python3 -m venv --system-site-packages /opt/arp-sensor/.venv \
 && /opt/arp-sensor/.venv/bin/pip install --no-cache-dir /opt/arp-sensor \
 && ln -s /opt/arp-sensor/.venv/bin/arp-sensor /usr/local/bin/arp-sensor
ENTRYPOINT ["arp-sensor"]
CMD ["run", "--help"]

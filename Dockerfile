# arp-sensor container image for deploy/kubernetes (kernel headers come from the node's /lib/modules).
#   docker build -t registry.example/arp-sensor:0.1.0 . && docker push registry.example/arp-sensor:0.1.0
FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-bpfcc python3-venv python3-pip iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /opt/arp-sensor/
COPY sensor /opt/arp-sensor/sensor
# --system-site-packages: bcc is Debian's python3-bpfcc (the PyPI "bcc" is another project).
RUN python3 -m venv --system-site-packages /opt/arp-sensor/.venv \
 && /opt/arp-sensor/.venv/bin/pip install --no-cache-dir /opt/arp-sensor \
 && ln -s /opt/arp-sensor/.venv/bin/arp-sensor /usr/local/bin/arp-sensor
ENTRYPOINT ["arp-sensor"]
CMD ["run", "--help"]

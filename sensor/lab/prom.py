"""A real Prometheus server inside a lab node, scraping the lab's sensors with deploy/prometheus's rules: what
the end-to-end Prometheus test and the incident benchmark stand on. Debian's `prometheus` package provides
the binary (scripts/install-system.sh). It listens on the node's loopback only; queries go through a socket
opened inside that namespace, so nothing of it is reachable from the machine's own interfaces."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

from pyroute2 import netns

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "arp-sensor.rules.yml"
PROM_PORT = 9090


class LabPrometheus:
    def __init__(self, lab: Any, node: str, targets: list[str], workdir: Path, interval: str = "1s",
                 rules: Path = RULES) -> None:
        self.ns = lab.netns(node)
        self.workdir = workdir
        cfg = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": "900ms" if interval == "1s" else "10s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "arp-sensor", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(cfg))  # JSON is YAML
        self._log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            lab.exec_argv(node, ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                                 f"--web.listen-address=127.0.0.1:{PROM_PORT}"]),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str, **params: str) -> Any:
        """GET an API path; returns `data` of a successful answer (raises AssertionError otherwise)."""
        netns.pushns()
        try:
            netns.setns(self.ns, flags=0)
            conn = http.client.HTTPConnection("127.0.0.1", PROM_PORT, timeout=10)
            conn.connect()  # the socket stays in the namespace it was made in
        finally:
            netns.popns()
        try:
            conn.request("GET", path + ("?" + urllib.parse.urlencode(params) if params else ""))
            body = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        if body.get("status") != "success":
            raise AssertionError(f"prometheus: {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        r = self.query(expr)
        return float(r[0]["value"][1]) if r else None

    def alerts(self, name: str = "ArpSensorZombiePeer") -> list[dict]:
        """Firing alerts called `name`."""
        return [a for a in self.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == "firing"]

    def stop(self) -> str:
        """Stop it; returns the end of its log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        try:
            return (self.workdir / "prometheus.log").read_text()[-2000:]
        except OSError:  # the caller already removed its work directory
            return ""

"""Outputs for log pipelines: JSON lines (stdout, file, tcp, udp, unix) and Fluent forward (msgpack).

API used by the runner:

    d = build_outputs(["-", "forward://127.0.0.1:24224?chunk=1"], tag="arp_sensor")
    d.emit(event)            # never blocks: network outputs queue (bounded) and send from their own thread
    d.stats()                # {spec: {type, queued, sent, dropped, errors, connected}}
    d.health_counters()      # totals + per-output list to merge into the arp_sensor.health counters
    d.reopen()               # on SIGHUP: reopen file outputs (logrotate); signal-safe
    d.close(timeout=5.0)     # flush what can be delivered in time; the rest counts as dropped

Bad specs raise SensorError (exit 2). Guarantees per output are in docs/outputs.md.
"""

from sensor.outputs.dispatch import Dispatcher, build_outputs
from sensor.outputs.sink import DEFAULT_QUEUE
from sensor.outputs.spec import FORMS, OutputSpec, parse_spec

__all__ = ["DEFAULT_QUEUE", "FORMS", "Dispatcher", "OutputSpec", "build_outputs", "parse_spec"]

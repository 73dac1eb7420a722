"""The netns lab: a Calico-style BIRD full mesh (sensor.lab.lab), its BIRD config renderer
(sensor.lab.birdconf, shared with vagrant/) and `arp-sensor lab` (sensor.lab.cli)."""

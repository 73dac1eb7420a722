"""`arp-sensor doctor` on this host, with the kernel headers hidden, as an unprivileged user, with BIRD."""

from __future__ import annotations

from sensor.ui.doctor import MIN_KERNEL, kernel_version


def test_kernel_version_parse():
    assert kernel_version("6.18.44-fc-v595") == (6, 18)
    assert kernel_version("5.4.0-150-generic") < MIN_KERNEL <= kernel_version("5.10.0-28-amd64")
    assert kernel_version("garbage") == (0, 0)



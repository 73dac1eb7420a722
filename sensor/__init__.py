"""arp-sensor: count ARP requests per target in the kernel and name the BGP peers behind an ARP storm."""

__version__ = "0.1.0"

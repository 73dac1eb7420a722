"""The kernel's IPv4 neighbour (ARP) table: how full it is, what state its entries are in (issue 16)."""

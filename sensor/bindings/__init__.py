"""IP -> MAC bindings per (interface, VLAN), as arpwatch keeps them: learnt from the counted ARP entries
(the MAC is in the kernel key), with change, flip-flop and conflict events and a state file (issue 16)."""

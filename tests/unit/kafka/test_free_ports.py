"""Ports for a broker's listeners: found together, so that no two are the same."""

from __future__ import annotations

from stream_lstm.kafka.processes import free_ports


def test_ports_found_together_are_distinct() -> None:
    for _ in range(50):  # found one by one, the kernel may give a port just released again
        ports = free_ports(8)
        assert len(set(ports)) == 8, ports

"""The local Docker engine as the container tests and bench/containers.py use it."""

from __future__ import annotations

import re
import subprocess


def docker_gateway() -> str:
    """Where containers on the default bridge reach this machine (Lithops' localhost containers sit
    there): the bridge's gateway as Docker reports it, else the address of its docker0 interface
    (Docker 20.10 leaves the gateway out of the default bridge's IPAM config); "" if neither."""
    inspected = subprocess.run(["docker", "network", "inspect", "bridge", "--format",
                                "{{range .IPAM.Config}}{{.Gateway}}{{end}}"], capture_output=True, text=True,
                               timeout=60)
    if inspected.returncode == 0 and inspected.stdout.strip():
        return inspected.stdout.strip()
    interface = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True,
                               timeout=60)
    address = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", interface.stdout)
    return address.group(1) if address else ""

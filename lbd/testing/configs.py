"""Config files for tests and benchmarks of the daemon at scale (issue 9)."""

from __future__ import annotations

from pathlib import Path


def bgp_services_config(tmp: Path, services: int, *, pool: str = "10.88.0.0/24", accept: str | None = "address") -> Path:
    """``tmp/lbd.toml``: node ``n1`` (state and control socket under ``tmp``), one BGP pool
    ``routed`` announced to one peer, and ``services`` static services ``s0``… in it.

    ``accept = "address"`` (the default here): per-VIP binds on ``lo``, the plan's per-VIP
    path; ``None`` leaves lbd's default (one local route per prefix)."""
    path = tmp / "lbd.toml"
    body = (f'[node]\nname = "n1"\nstate_dir = "{tmp}/state"\ncontrol_socket = "{tmp}/lbd.sock"\n'
            f'[[pool]]\nname = "routed"\naddresses = ["{pool}"]\n'
            '[[bgp_peer]]\nname = "gw"\nmy_asn = 64512\npeer_asn = 64512\npeer_address = "10.77.0.1"\n'
            '[[bgp_advertisement]]\npools = ["routed"]\n')
    if accept is not None:
        body += f'accept = "{accept}"\n'
    body += "".join(f'[[service]]\nname = "s{i}"\npool = "routed"\n' for i in range(services))
    path.write_text(body)
    return path

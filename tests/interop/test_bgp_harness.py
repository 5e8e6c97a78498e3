"""The harness itself, with ExaBGP as the speaker instead of lbd.

If an lbd interop test fails, this tells whether the router readback
(``bgp_peers``) is sound: ExaBGP's announcement, read through each router's
own CLI, must come back with exactly the attributes ExaBGP was told to send.
"""

from __future__ import annotations

import pytest
from interop.bgp_peers import PEERS, Neighbor, PeerSpec
from interop.bgp_speakers import Announce, ExaBgpSpeaker, SessionSpec

from lbd.testing.netlab import require_binary

pytestmark = [pytest.mark.lab, pytest.mark.interop]

AS = 4200000002  # iBGP, so that LOCAL_PREF is carried


@pytest.mark.parametrize("kind", sorted(PEERS))
def test_router_reads_back_what_exabgp_sent(lab, kind):  # type: ignore[no-untyped-def]
    cls = PEERS[kind]
    require_binary("exabgp", *[b for b in cls.binaries if not b.startswith("/")])
    router_host = lab.add_host("router", ["10.77.0.1/24"])
    node = lab.add_host("node", ["10.77.0.2/24"])
    router = cls(router_host, PeerSpec(asn=AS, router_id="10.77.0.1",
                                       neighbors=[Neighbor("10.77.0.2", AS, graceful_restart=False)])).start()
    sent = Announce("10.77.100.7/32", ("65000:7", "65001:8"), ("4200000002:3:4",), 321)
    ExaBgpSpeaker(node, SessionSpec("10.77.0.1", AS, AS, "10.77.0.2", "10.77.0.2"), [sent]).start()
    routes = router.wait_routes(lambda rs: sent.prefix in rs, timeout=30, what="ExaBGP's route")
    got = routes[sent.prefix]
    assert got.next_hops == ("10.77.0.2",)
    assert sorted(got.communities) == sorted(sent.communities)
    assert got.large_communities == sent.large_communities
    assert got.local_pref == 321
    assert router.session_state("10.77.0.2") == "established"

"""The cluster: wire protocol, transport, membership and replication.

* ``messages``   the protocol's message types (plain frozen dataclasses)
* ``wire``       their binary encoding and the length-prefixed framing (no pickle, ever)
* ``auth``       cookie challenge-response (HMAC), the secret never crosses the wire
* ``replicator`` the sans-I/O replication state machine (driven by the node or the simulator)
* ``transport``  asyncio TCP: listener, dialers, heartbeats, backpressure
"""

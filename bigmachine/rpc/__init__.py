"""The RPC layer: wire format, a sans-I/O HTTP/1.1 codec, server dispatch and clients.

It knows nothing of machines or systems: it moves calls to named methods and back.
"""

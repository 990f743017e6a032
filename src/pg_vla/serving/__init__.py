"""Policy server: a `pg_vla.policy.Policy` behind openpi's websocket + msgpack protocol.

    codec         msgpack with numpy arrays (openpi_client.msgpack_numpy's wire format)
    observations  request keys -> Observation (config/serve/*.yaml), validation, server metadata
    batching      requests waiting at the same time share one Policy.infer_batch, off the event loop
    server        websocket handling: metadata first, lock-step request/reply, errors as text frames

Entry point: scripts/serve_policy.py.
"""

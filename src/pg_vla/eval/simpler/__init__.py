"""SimplerEnv as a client of the policy server, in the simulator's own environment (numpy<2, gymnasium<1).

    conventions  numpy-only observation -> state / image and chunk -> action conversions (both robots)
    client       the episode loop: steps SimplerEnv, asks scripts/serve_policy.py for chunks over the
                 openpi websocket protocol, writes episodes.jsonl, summary.json and videos

Nothing in this package imports torch or tensorflow; scripts/setup_simpler.sh builds the environment.
"""

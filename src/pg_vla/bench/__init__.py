"""The pi0 model benchmark behind scripts/bench/inference.py: latency, throughput, memory, FLOP rates."""

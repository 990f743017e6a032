"""Environment adapters: simulator observations -> `pg_vla.policy.Observation`, action chunks -> env actions."""

from pg_vla.eval.adapters.base import EnvAdapter

__all__ = ["EnvAdapter"]

"""Simulator task environments behind one small interface (`EvalEnv`)."""

from pg_vla.eval.envs.base import EvalEnv, StepResult

__all__ = ["EvalEnv", "StepResult"]

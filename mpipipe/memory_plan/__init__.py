"""The memory planner: predicted bytes per pipeline rank, a verdict against a budget, and the
smallest change that fits (`mpipipe plan`, and the set-up's check in memory_fit.py)."""

from mpipipe.memory_plan.budget import gib_text, parse_memory
from mpipipe.memory_plan.predict import MemoryPlan, RankMemory, predict_layout, predict_memory
from mpipipe.memory_plan.suggest import Change, smallest_fix

__all__ = ["Change", "MemoryPlan", "RankMemory", "gib_text", "parse_memory", "predict_layout",
           "predict_memory", "smallest_fix"]

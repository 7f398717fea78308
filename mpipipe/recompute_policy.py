"""The activation recomputation policies a run can choose (runtime.recompute).

none: every layer keeps its caches; attention: attention layers drop their
probabilities and recompute them in the backward; block: a transformer
block keeps only its input and recomputes its forward in the backward.
"""

RECOMPUTE_POLICIES = ("none", "attention", "block")

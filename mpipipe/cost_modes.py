"""The names parallel.costs takes besides F,B[,W] ratios.

unit: each kind's reference order (build_schedule); measured: the order
planned from the ops' times measured in the run's first steps.
"""

UNIT = "unit"
MEASURED = "measured"
COST_MODES = (UNIT, MEASURED)

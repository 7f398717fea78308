"""The op-cost profiles F,B,W (I = B − W) the benchmarks run, as --cost and parallel.costs
take them."""

# The schedule table: B = 2F with W = I, cheap W, cheap B, and B = 3F.
TABLE_PROFILES = ("1,2,1", "1,1,0.5", "1,2,0.5", "1,3,1.5")
# The emulated part: its first profile at every f0, the others at a few.
EMULATED_PROFILES = ("1,2,1", "1,1,0.5", "1,2,0.5")

"""mpipipe.fused"""

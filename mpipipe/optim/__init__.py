"""mpipipe.optim"""

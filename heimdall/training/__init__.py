"""Simulation, the RSSI baseline, training and evaluation of the reference model, the example input.

Not shipped in the Bento (training needs the `train` extra).
"""

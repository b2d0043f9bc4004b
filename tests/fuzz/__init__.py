"""A differential fuzzer: random graphs of tensor ops run on zyx.OpenCL(), zyx.CPU(), numpy and torch autograd.

`graphs.py` draws a graph from a seed, `ops.py` says what each op means in each framework, `check.py` runs and
compares a graph and shrinks a failing one, `python -m tests.fuzz` runs a seed range and prints reproducers.
"""

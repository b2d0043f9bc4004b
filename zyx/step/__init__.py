"""@zyx.jit: trace a step once per call key, then replay its program (jit.py); the tensors it reads found by
paths into Python state (reach.py) and bound at each replay by one compiled function (binder.py), its arguments
keyed (arguments.py), why it traced again (recapture.py)."""

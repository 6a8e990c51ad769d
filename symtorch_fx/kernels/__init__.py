"""The kernels: lower a region's equations to code that runs them.

``lower`` prints torch code and chooses a kernel per call; ``system`` holds what a fused kernel
computes (forward and backward row systems, the row space, the printer skeleton); ``cpu``
(generated C++) and ``triton`` print and run it; ``fused`` is the dispatcher behind the
``torch.library`` ops. ``lower`` hands the backends to ``fused``; backends import only ``system``.

Internal: everything here may change.
"""

"""Planning a run before paying for it (``grendel plan``): the step's cost per stage, calibrated per device
(:mod:`grendel_py.plan.profile`), applied to the counts the simulator predicts for W ranks."""

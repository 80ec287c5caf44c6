"""Using what a run produced: its model on new volumes (``predict``), and on the slices annotators
are about to label (pre-annotations, ``SlicePredictor``).

Nothing is imported here at package import time: ``paal_ray.inference.predict`` (Ray Data driver
and actor), ``paal_ray.inference.volumes`` (one volume: read, preprocess, predict, write) and
``paal_ray.inference.predictor`` (the model part, torch).
"""

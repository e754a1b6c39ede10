"""The distributed engine: one training step over W ranks that computes what one rank would.

- :mod:`~grendel_py.parallel.runtime`: ``DistContext`` (rank, world size, device, launcher), process groups;
- :mod:`~grendel_py.parallel.step`: the step's seven stages (project, cost, assign, exchange, rasterize, halo,
  loss) for a batch, with its ``StepOptions`` and ``Batch``;
- :mod:`~grendel_py.parallel.exchange`: the sparse all-to-all of projected splats and its gradients;
- :mod:`~grendel_py.parallel.halo`: the rendered pixels within the SSIM window of a rank's region;
- :mod:`~grendel_py.parallel.redistribute`, :mod:`~grendel_py.parallel.ids`: new spatial shards with their Adam
  state, ids of new Gaussians that do not depend on the ranks;
- :mod:`~grendel_py.parallel.export`: one merged model file written by every rank at its offsets;
- :mod:`~grendel_py.parallel.watchdog`: a lost rank stops the others, named.
"""

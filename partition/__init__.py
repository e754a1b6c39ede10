"""How the work is split among ranks: pure functions on tensors and arrays, with no process group (a
collective, where one is needed, is passed in as a ``reduce`` callable).

- Gaussians by space: :mod:`partition.spatial` (kd-tree or Morton shards, on one process or over data
  spread across ranks) and :mod:`partition.select` (exact order statistics over rows spread across ranks,
  which the spread kd split is built on; densification reuses it for its global top-k);
- tiles to ranks: :mod:`partition.tiles` (the 16x16 tile geometry), :mod:`partition.curve` (a Hilbert-like order
  of a tile grid), :mod:`partition.assign` (the tile table and the assignment strategies) and
  :mod:`partition.balancer` (the cost model that picks an assignment and calibrates itself).
"""

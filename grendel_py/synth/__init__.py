"""Synthetic COLMAP datasets (``grendel synth``): procedural scenes rendered by an independent ray caster.

The scenes are analytic (spheres, axis-aligned boxes, a ground plane at ``z = 0``; world ``z`` is up) with
procedural, view-independent textures (checkers, stripes, seeded value noise, window grids, street grids)
lit by a fixed directional light plus ambient. Images come from a vectorised torch ray caster, never from
a Gaussian splat renderer, so they are a fair reconstruction target. Cameras follow :mod:`grendel_py.data.cameras`
(OpenCV axes, world -> camera ``R, t``, pixel ``(i, j)`` centred at ``(i + 0.5, j + 0.5)``).

Everything is deterministic given the seed: scene and camera parameters come from numpy generators seeded
with ``[seed, stream]``, and the per-pixel maths uses only exactly rounded operations (``+ - * /``, sqrt,
floor, min/max) and integer hashing, so results do not depend on the number of threads.

Modules: :mod:`~grendel_py.synth.scene` (the scene description), :mod:`~grendel_py.synth.intersect` (rays
against primitives), :mod:`~grendel_py.synth.textures` (textures and shading), :mod:`~grendel_py.synth.raytrace`
(images), :mod:`~grendel_py.synth.presets` (the ``object`` and ``city`` scenes and their cameras),
:mod:`~grendel_py.synth.writer` (the COLMAP dataset: images, cameras, sparse points with tracks).
"""

"""The photometric loss, in one room: (1 - l) L1 + l D-SSIM, as INRIA 3DGS.

- :mod:`grendel_py.loss.pixels`: the per-pixel maths on whole images and on pixel regions with their SSIM
  halo (11x11 Gaussian window, zero padding at the image border), the executable specification;
- :mod:`grendel_py.loss.regions`: the loss of a batch over a rank's regions (its own pixels plus the halo the
  other ranks send), normalised per camera so that the ranks' losses sum to the single-rank loss; exposure
  transforms; the sums the logs and the evaluation all-reduce;
- :mod:`grendel_py.loss.fused`: the same loss on the CUDA kernels of cuda/loss.cu, L1 and SSIM forward and
  backward over all the batch's regions in one launch each way.

The distributed step (:mod:`grendel_py.parallel.step`) and the evaluation call
:func:`~grendel_py.loss.regions.regions_loss` and its sums; given a kernel launcher it runs the fused kernels
(the second implementation behind that function, as the renderer's kernels are a second backend behind
:func:`grendel_py.render.rasterize_batch`).
"""

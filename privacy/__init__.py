"""Privacy analysis: how much of a face leaks from a model's templates or training gradients.

``metrics`` (PSNR, SSIM, judge acceptance, 1-bit templates), ``inversion`` (a decoder from
templates to faces), ``gradients`` (inverting gradients, Geiping et al. 2020). Every function
takes torch modules and tensors, so any teacher or student can be attacked.
"""

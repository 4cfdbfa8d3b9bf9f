"""Triton kernels for ltxdist (imported as `ltxdist_kernels`)."""

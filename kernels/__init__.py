"""Triton kernels, one op per file, each beside its pure-torch reference twin."""

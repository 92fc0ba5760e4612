"""Part I: the Transformer in NumPy, every backward pass written by hand."""

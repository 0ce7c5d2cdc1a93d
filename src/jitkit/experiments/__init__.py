"""Experiments built from the library: the manifold toy and the toy-scale DiT-vs-JiT shapes study."""

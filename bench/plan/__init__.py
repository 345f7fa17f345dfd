"""``make plan``: a per-GPU memory plan of a recipe's training step, computed on the ``meta`` device
(docs/scale.md, "On a cluster")."""

"""The contrastive baseline: InfoNCE (or MIL-NCE) on relevance labels, the label-using reference method."""

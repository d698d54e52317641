"""Layer 1: what every step shares: the canvas, the one Box, atomic files, content digests, the cache, kinds."""

"""Layer 6: probes, statistics and analyses on pooled vectors: detection, disease, lesions, SFDI, separation."""

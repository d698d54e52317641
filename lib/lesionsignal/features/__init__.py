"""Layer 5: frozen encoders and the pooled vectors of one forward pass, through the one extraction engine."""

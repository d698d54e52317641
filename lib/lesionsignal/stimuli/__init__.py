"""Layer 4: the controlled stimuli: the 29-condition panel, where each patch goes, how it is drawn, the gallery."""

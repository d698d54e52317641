"""Layer 9: running the study: every path of a run, the stages that hand results on, the notebook runner."""

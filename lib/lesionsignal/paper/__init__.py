"""Layer 7: the paper's tables and figures: which conditions each uses, writers, reported vs reproduced."""

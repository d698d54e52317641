"""lesionsignal: where frozen chest-radiograph foundation-model embeddings keep or lose small-lesion signal."""

__version__ = "0.1.0"

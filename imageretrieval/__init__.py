"""Deep-learning image retrieval for fashion products.

Pipeline: catalog -> model zoo -> features -> PCA-whitening -> FAISS index -> search.
"""

__version__ = "0.1.0"

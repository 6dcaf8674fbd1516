"""embedx index layer: dense (FAISS), sparse (native impact and Lucene), document store,
index bundles and hybrid fusion. Depends on numpy, scipy, faiss and lmdb, never on torch."""

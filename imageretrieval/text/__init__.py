"""Search by words: a frozen sentence encoder, a projection into a model's image space, BM25, fusion."""

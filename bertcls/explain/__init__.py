"""Explanations: which words made a saved model decide, split into the exact lexical part (the TF-IDF layer is
linear) and the semantic part (integrated gradients through the encoder), and the page and CSV that show them."""

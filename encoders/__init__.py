"""Text encoders: the sentence-transformer bi-encoder for items, users and instructions."""

"""The Xet storage format as the mirror reads it: xorb chunks, their compression schemes and Xet hashes."""

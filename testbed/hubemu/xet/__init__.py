"""A Xet CAS for the emulator: data formats (format.py), file layouts (layout.py), state (store.py), routes (cas.py)."""

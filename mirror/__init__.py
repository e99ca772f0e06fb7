"""hub-mirror: a self-hosted Hugging Face Hub mirror proxy with a verified, content-addressed cache."""

__version__ = "0.1.0"

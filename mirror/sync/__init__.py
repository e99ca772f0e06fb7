"""Scheduled sync of allow-listed repos: jobs, the branch pins they publish, and the scheduler."""

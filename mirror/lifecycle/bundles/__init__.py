"""Offline bundles: cached revisions carried to a mirror that cannot reach the Hub (air-gapped clusters).

`export_bundle` copies what a mirror reads to serve a revision out of a cache, from storage alone;
`verify_bundle` then `load_bundle` check every byte of a bundle before writing any of it into another
cache. The format is described in `format`; each step has its module:

    target     what to export (a repo at a revision) and the plan of what that copies
    export     writing a bundle (through `writers`)
    manifest   reading a bundle's manifest (through `readers`)
    verify     checking every object against the manifest
    load       writing a verified bundle into storage
"""

from mirror.lifecycle.bundles.errors import BadBundle, BundleError, NotCached
from mirror.lifecycle.bundles.export import ExportSummary, check_destination, export_bundle
from mirror.lifecycle.bundles.format import FORMAT, FORMAT_VERSION
from mirror.lifecycle.bundles.load import ImportSummary, load_bundle
from mirror.lifecycle.bundles.progress import ProgressFactory, human_size, no_progress
from mirror.lifecycle.bundles.target import RevisionPlan, Target, parse_target, plan_revision, resolve
from mirror.lifecycle.bundles.verify import Bundle, verify_bundle

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BadBundle",
    "Bundle",
    "BundleError",
    "ExportSummary",
    "ImportSummary",
    "NotCached",
    "ProgressFactory",
    "RevisionPlan",
    "Target",
    "check_destination",
    "export_bundle",
    "human_size",
    "load_bundle",
    "no_progress",
    "parse_target",
    "plan_revision",
    "resolve",
    "verify_bundle",
]

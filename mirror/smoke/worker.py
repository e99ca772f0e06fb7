"""One smoke run, in its own process: download, verify, load, ask, compare. `python -m mirror.smoke.worker`.

The parent (runner.py) sets HF_ENDPOINT and HF_HOME before this interpreter starts, because
huggingface_hub reads them at import time. The result is written as JSON to --result; stdout is left
to the libraries (progress bars, warnings).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mirror.smoke.options import SmokeOptions
from mirror.smoke.result import SmokeFailure, SmokeResult
from mirror.smoke.verify import ListedFile, compare_with_reference, missing_weights, verify_files

MB = 1_000_000


def list_files(api: Any, repo: str, commit: str) -> list[ListedFile]:
    from huggingface_hub.hf_api import RepoFile

    entries = api.list_repo_tree(repo, revision=commit, recursive=True)
    return [
        ListedFile(e.path, e.size, e.blob_id, e.lfs.sha256 if e.lfs else None)
        for e in entries
        if isinstance(e, RepoFile)
    ]


def download(options: SmokeOptions, result: SmokeResult) -> tuple[Path, list[ListedFile]]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.file_download import repo_folder_name

    result.stage = "download"
    api = HfApi(endpoint=options.endpoint)
    # Pin everything to one commit, so the listing, the download and the report describe the same files.
    commit = api.repo_info(options.repo, revision=options.revision).sha
    result.commit = commit
    listing = list_files(api, options.repo, commit)
    result.bytes = sum(entry.size for entry in listing)
    start = time.perf_counter()
    try:
        local = Path(snapshot_download(options.repo, revision=commit, endpoint=options.endpoint))
    except Exception as exc:
        # Name the files that did not arrive: the client's own error rarely says which shard broke.
        snapshot = Path(HF_HUB_CACHE) / repo_folder_name(repo_id=options.repo, repo_type="model") / "snapshots" / commit
        partial = verify_files(snapshot, listing) if snapshot.is_dir() else None
        prefix = "missing on disk: "
        missing = [p.removeprefix(prefix) for p in (partial.problems if partial else []) if p.startswith(prefix)]
        detail = f"; not downloaded: {', '.join(missing)}" if missing else ""
        raise SmokeFailure("download", f"download failed: {type(exc).__name__}: {exc}{detail}") from exc
    result.download_s = round(time.perf_counter() - start, 3)
    result.download_mb_per_s = round(result.bytes / MB / result.download_s, 3) if result.download_s else None
    return local, listing


def verify(options: SmokeOptions, result: SmokeResult, local: Path, listing: list[ListedFile]) -> None:
    result.stage = "verify"
    report = verify_files(local, listing)
    if not report.ok:
        reason = f"verification against the mirror's listing failed before loading: {report.reason()}"
        raise SmokeFailure("verify", reason)
    result.files_verified = len(report.verified)
    problems = missing_weights(local, listing)
    if problems:
        raise SmokeFailure("verify", f"repo incomplete: {'; '.join(problems)}")
    if options.reference:
        reference = Path(options.reference)
        if not reference.is_dir():
            raise SmokeFailure("verify", f"reference directory not found: {reference}")
        compared = compare_with_reference(local, listing, reference)
        result.reference = {"dir": str(reference), "files_equal": compared.ok, "files_compared": len(listing)}
        if not compared.ok:
            raise SmokeFailure("verify", f"files differ from the reference: {compared.reason()}")


def answer_matches(answer: str, expected: Sequence[str]) -> bool:
    words = set(re.findall(r"[a-z0-9]+", answer.lower()))
    return any(word.lower() in words for word in expected)


def infer(options: SmokeOptions, result: SmokeResult, local: Path) -> None:
    from mirror.smoke import inference

    result.stage = "load"
    device = inference.resolve_device(options.device)
    dtype = inference.resolve_dtype(options.dtype, device)
    result.device, result.dtype = device, dtype
    image = inference.make_image(options.image)
    inference.reset_peak_memory()
    start = time.perf_counter()
    processor, model = inference.load(local, device, dtype)
    result.load_s = round(time.perf_counter() - start, 3)

    result.stage = "generate"
    got = inference.ask(processor, model, image, options.question, options.max_new_tokens)
    result.peak_gpu_memory_bytes = inference.peak_memory_bytes(device)
    result.answer, result.token_ids, result.logits_sha256 = got.text, got.token_ids, got.logits_sha256
    result.new_tokens = len(got.token_ids)
    result.time_to_first_token_s = round(got.time_to_first_token_s, 4) if got.time_to_first_token_s else None
    result.tokens_per_s = round(got.tokens_per_s, 2) if got.tokens_per_s else None
    if result.expected and not answer_matches(got.text, result.expected):
        raise SmokeFailure("generate", f"answer {got.text!r} does not contain any of {result.expected}")
    if not options.reference:
        return

    result.stage = "compare"
    inference.unload(model)
    processor, model = inference.load(Path(options.reference), device, dtype)
    ref = inference.ask(processor, model, image, options.question, options.max_new_tokens)
    diff = inference.max_abs_diff(got.logits, ref.logits)
    assert result.reference is not None
    result.reference.update(
        token_ids=ref.token_ids,
        token_ids_equal=ref.token_ids == got.token_ids,
        logits_sha256=ref.logits_sha256,
        logits_equal=ref.logits_sha256 == got.logits_sha256,
        logits_max_abs_diff=diff,
    )
    # Same files, device and dtype must give bit-identical results; anything else means the load differs.
    if ref.token_ids != got.token_ids:
        reason = f"generated token ids differ from the reference: {got.token_ids} vs {ref.token_ids}"
        raise SmokeFailure("compare", reason)
    if ref.logits_sha256 != got.logits_sha256:
        raise SmokeFailure("compare", f"prompt logits differ from the reference (max abs diff {diff})")


def run(options: SmokeOptions) -> SmokeResult:
    result = SmokeResult(options.repo, options.revision, options.endpoint, expected=options.expected_words())
    result.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    try:
        local, listing = download(options, result)
        verify(options, result, local, listing)
        infer(options, result, local)
    except SmokeFailure as failure:
        result.fail(failure.stage, failure.reason)
    except Exception as exc:  # any library error is a failed check at the stage it happened in
        result.fail(result.stage, f"{result.stage} failed: {type(exc).__name__}: {exc}")
    else:
        result.passed, result.stage = True, "done"
        if options.reference:
            result.reason = "files, token ids and prompt logits identical to the reference"
        else:
            result.reason = f"answer {result.answer!r} contains an expected word"
        if options.reference and result.expected:
            result.reason += f"; answer {result.answer!r} contains an expected word"
    result.duration_s = round(time.perf_counter() - start, 3)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mirror.smoke.worker")
    parser.add_argument("--options", required=True, type=Path, help="SmokeOptions as JSON")
    parser.add_argument("--result", required=True, type=Path, help="where to write the SmokeResult JSON")
    args = parser.parse_args(argv)
    result = run(SmokeOptions.from_json(args.options.read_text()))
    args.result.write_text(result.to_json())
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())

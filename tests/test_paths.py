"""Parsing raw (still percent-encoded) request paths into Hub routes, and refusing hostile ones."""

from __future__ import annotations

import pytest

from mirror.errors import BadRequest, NotFound
from mirror.hub.paths import ApiTarget, ResolveTarget, parse_api, parse_resolve
from mirror.repo import RepoRef

SHA = "0123456789abcdef0123456789abcdef01234567"


def resolved(raw: str) -> tuple[str, str, str, str]:
    target = parse_resolve(raw)
    assert isinstance(target, ResolveTarget), raw
    return target.repo.repo_type, target.repo.repo_id, target.revision, target.path


def api(raw: str) -> tuple[str, str, str, str | None, str]:
    target = parse_api(raw)
    assert isinstance(target, ApiTarget), raw
    return target.repo.repo_type, target.repo.repo_id, target.op, target.revision, target.path


# --- resolve --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/gpt2/resolve/main/config.json", ("model", "gpt2", "main", "config.json")),
        ("/org/name/resolve/main/config.json", ("model", "org/name", "main", "config.json")),
        ("/models/org/name/resolve/main/config.json", ("model", "org/name", "main", "config.json")),
        (
            "/datasets/org/data/resolve/main/train/part-0.parquet",
            ("dataset", "org/data", "main", "train/part-0.parquet"),
        ),
        ("/datasets/squad/resolve/main/README.md", ("dataset", "squad", "main", "README.md")),
        ("/spaces/org/app/resolve/main/app.py", ("space", "org/app", "main", "app.py")),
        (f"/org/name/resolve/{SHA}/a/b/c/d.bin", ("model", "org/name", SHA, "a/b/c/d.bin")),
        ("/org/name/resolve/v1.0/x", ("model", "org/name", "v1.0", "x")),
        ("/org/name/resolve/main/x.bin?download=true", ("model", "org/name", "main", "x.bin")),
        ("//org/name/resolve/main/x", ("model", "org/name", "main", "x")),
        ("/Org-1/Name_2.v3/resolve/main/x", ("model", "Org-1/Name_2.v3", "main", "x")),
    ],
)
def test_resolve_routes(raw: str, expected: tuple[str, str, str, str]) -> None:
    assert resolved(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/org/name/resolve/refs%2Fpr%2F1/config.json", ("model", "org/name", "refs/pr/1", "config.json")),
        ("/org/name/resolve/refs/pr/1/config.json", ("model", "org/name", "refs/pr/1", "config.json")),
        ("/gpt2/resolve/refs%2Fpr%2F12/config.json", ("model", "gpt2", "refs/pr/12", "config.json")),
        ("/gpt2/resolve/refs/pr/12/config.json", ("model", "gpt2", "refs/pr/12", "config.json")),
        (
            "/datasets/squad/resolve/refs/convert/parquet/plain_text/train/0000.parquet",
            ("dataset", "squad", "refs/convert/parquet", "plain_text/train/0000.parquet"),
        ),
        ("/org/name/resolve/feature%2Fx/f", ("model", "org/name", "feature/x", "f")),
    ],
)
def test_resolve_revisions_with_slashes(raw: str, expected: tuple[str, str, str, str]) -> None:
    assert resolved(raw) == expected


@pytest.mark.parametrize(
    ("segment", "path"),
    [
        ("my%20file.txt", "my file.txt"),
        ("caf%C3%A9/%E2%9C%93.bin", "café/✓.bin"),
        ("%E6%97%A5%E6%9C%AC.txt", "日本.txt"),
        ("a%23b.txt", "a#b.txt"),
        ("what%3F.txt", "what?.txt"),
        ("100%25.txt", "100%.txt"),
        ("sub%2Ffile.txt", "sub/file.txt"),
        ("a+b.txt", "a+b.txt"),
        ("..a/b..", "..a/b.."),
        (".hidden/.gitattributes", ".hidden/.gitattributes"),
        # Decoded once only: a double-encoded dot-dot is a file literally named "%2e%2e".
        ("%252e%252e", "%2e%2e"),
        ("%252e%252e/%252F", "%2e%2e/%2F"),
    ],
)
def test_resolve_file_names_are_decoded_once(segment: str, path: str) -> None:
    assert resolved(f"/org/name/resolve/main/{segment}")[3] == path


@pytest.mark.parametrize(
    "raw",
    [
        "/",
        "",
        "/org/name",
        "/gpt2/resolve/main",
        "/org/name/resolve/main",
        "/org/name/blob/main/x",
        "/org/name/tree/main/x",
        "/a/b/c/resolve/main/x",  # three-part repo ids do not exist
        "/org//name/resolve/main/x",
        "/api/models/org/name",
    ],
)
def test_resolve_returns_none_for_other_routes(raw: str) -> None:
    assert parse_resolve(raw) is None


TRAVERSALS = [
    "..",
    "../x",
    "a/../../x",
    "a/..",
    ".",
    "./x",
    "a/./b",
    "%2e%2e",
    "%2e%2e/x",
    "%2E%2E%2Fetc%2Fpasswd",
    "..%2Fx",
    "a%2F..",
    "a%2F..%2F..%2Fetc",
    "%2e",
    "a%2F%2E%2Fb",
    "%5C..%5Cx",
    "..%5Cx",
    "a%5Cb",
    "a\\b",
    "x%00.txt",
    "%00",
    "a//b",
    "a%2F%2Fb",
    "a%2F",
    "%0Ax",
    "a%7Fb",
    "%ff",
    "caf%E9.txt",  # latin-1, not UTF-8
    "%C0%AE%C0%AE/x",  # overlong UTF-8 encoding of "."
    "%E2%82",  # truncated sequence
]


@pytest.mark.parametrize("file_path", TRAVERSALS)
def test_resolve_rejects_bad_file_paths(file_path: str) -> None:
    with pytest.raises(BadRequest):
        parse_resolve(f"/org/name/resolve/main/{file_path}")


@pytest.mark.parametrize(
    "revision",
    [
        "..",
        "%2e%2e",
        "..%2F..%2Fetc",
        "refs%2F..%2Fx",
        "main%2F",
        "%2Fmain",
        "main%00",
        "ma%5Cin",
        "%ff",
        "-rev",
        "r" * 257,
        "",
    ],
)
def test_resolve_rejects_bad_revisions(revision: str) -> None:
    with pytest.raises(BadRequest):
        parse_resolve(f"/org/name/resolve/{revision}/file.txt")


def test_resolve_unencoded_ref_with_traversal_is_rejected() -> None:
    with pytest.raises(BadRequest):
        parse_resolve("/org/name/resolve/refs/pr/..%2F..%2Fx/file.txt")


@pytest.mark.parametrize(
    "repo",
    [
        "-bad",
        "org/-bad",
        "_org/name",
        "a..b",
        "org/a..b",
        "a--b",
        "org/a--b",
        "name.",
        "name-",
        "org/name.git",
        "x" * 97,
        f"org/{'x' * 97}",
        "%2e%2e",
        "org/%2e%2e",
        "a%2Fb%2Fc",
        "org%00/name",
        "org/na%5Cme",
        "org/na%20me",
        "org/%ff",
    ],
)
def test_resolve_rejects_bad_repo_ids(repo: str) -> None:
    with pytest.raises(BadRequest):
        parse_resolve(f"/{repo}/resolve/main/file.txt")


def test_repo_name_length_limit() -> None:
    assert resolved(f"/org/{'x' * 96}/resolve/main/f")[1] == f"org/{'x' * 96}"
    with pytest.raises(BadRequest):
        parse_resolve(f"/org/{'x' * 97}/resolve/main/f")


def test_length_limits() -> None:
    longest = "/".join(["d" * 99] * 10) + "/" + "f" * 14  # 1004 characters
    longest += "g" * (1024 - len(longest))
    assert resolved(f"/org/name/resolve/main/{longest}")[3] == longest
    with pytest.raises(BadRequest, match="longer than 1024"):
        parse_resolve(f"/org/name/resolve/main/{longest}x")
    # Limits apply to decoded text: 1025 encoded spaces are 1025 characters, not 3075.
    with pytest.raises(BadRequest, match="longer than 1024"):
        parse_resolve(f"/org/name/resolve/main/{'%20' * 1025}")
    assert resolved(f"/org/name/resolve/{'r' * 256}/f")[2] == "r" * 256
    with pytest.raises(BadRequest, match="revision is longer"):
        parse_resolve(f"/org/name/resolve/{'r' * 257}/f")
    # Very long raw paths are refused before any splitting or decoding.
    with pytest.raises(BadRequest, match="request path longer"):
        parse_resolve("/org/name/resolve/main/" + "a/" * 3000)
    with pytest.raises(BadRequest, match="request path longer"):
        parse_api("/api/models/org/name/tree/main/" + "a/" * 3000)


# --- api ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/models/gpt2", ("model", "gpt2", "info", None, "")),
        ("/api/models/org/name", ("model", "org/name", "info", None, "")),
        ("/api/models/org/name/", ("model", "org/name", "info", None, "")),
        ("/api/datasets/org/data", ("dataset", "org/data", "info", None, "")),
        ("/api/spaces/org/app", ("space", "org/app", "info", None, "")),
        ("/api/models/org/name?expand=sha", ("model", "org/name", "info", None, "")),
        # A two-part repo whose name is an operation is still a repo.
        ("/api/models/org/tree", ("model", "org/tree", "info", None, "")),
        ("/api/models/org/name/revision/main", ("model", "org/name", "revision", "main", "")),
        (f"/api/models/org/name/revision/{SHA}", ("model", "org/name", "revision", SHA, "")),
        ("/api/models/gpt2/revision/main", ("model", "gpt2", "revision", "main", "")),
        ("/api/models/org/name/revision/refs%2Fpr%2F1", ("model", "org/name", "revision", "refs/pr/1", "")),
        ("/api/models/org/name/revision/refs/pr/1", ("model", "org/name", "revision", "refs/pr/1", "")),
        ("/api/models/gpt2/revision/refs%2Fpr%2F1", ("model", "gpt2", "revision", "refs/pr/1", "")),
        ("/api/models/org/name/tree/main", ("model", "org/name", "tree", "main", "")),
        ("/api/models/org/name/tree/main/sub%2Fdir", ("model", "org/name", "tree", "main", "sub/dir")),
        ("/api/models/org/name/tree/main/sub/dir", ("model", "org/name", "tree", "main", "sub/dir")),
        ("/api/models/org/name/tree/main/my%20dir", ("model", "org/name", "tree", "main", "my dir")),
        ("/api/models/org/name/tree/main/%252e%252e", ("model", "org/name", "tree", "main", "%2e%2e")),
        ("/api/models/org/name/tree/main?recursive=1", ("model", "org/name", "tree", "main", "")),
        ("/api/models/gpt2/tree/main/onnx", ("model", "gpt2", "tree", "main", "onnx")),
        (
            "/api/datasets/org/data/tree/refs%2Fconvert%2Fparquet/default%2Ftrain",
            ("dataset", "org/data", "tree", "refs/convert/parquet", "default/train"),
        ),
        (
            "/api/datasets/org/data/tree/refs/convert/parquet/default",
            ("dataset", "org/data", "tree", "refs/convert/parquet", "default"),
        ),
        ("/api/models/org/name/paths-info/main", ("model", "org/name", "paths-info", "main", "")),
        ("/api/models/org/name/paths-info/refs%2Fpr%2F3", ("model", "org/name", "paths-info", "refs/pr/3", "")),
        ("/api/models/org/name/commits/main", ("model", "org/name", "commits", "main", "")),
        ("/api/models/org/name/xet-read-token/main", ("model", "org/name", "xet-read-token", "main", "")),
        ("/api/models/org/name/refs", ("model", "org/name", "refs", None, "")),
        ("/api/models/gpt2/refs", ("model", "gpt2", "refs", None, "")),
        ("/api/datasets/org/data/refs?include_prs=1", ("dataset", "org/data", "refs", None, "")),
        ("/api/models/org/name/auth-check", ("model", "org/name", "auth-check", None, "")),
        ("/api/spaces/app/auth-check", ("space", "app", "auth-check", None, "")),
    ],
)
def test_api_routes(raw: str, expected: tuple[str, str, str, str | None, str]) -> None:
    assert api(raw) == expected


def test_api_target_repo_ref() -> None:
    target = parse_api("/api/datasets/org/data/revision/main")
    assert target is not None and target.repo == RepoRef("dataset", "org/data")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/models/gpt2/revision/refs/pr/1", ("model", "gpt2", "revision", "refs/pr/1", "")),
        ("/api/models/gpt2/tree/refs/pr/1", ("model", "gpt2", "tree", "refs/pr/1", "")),
        ("/api/models/gpt2/paths-info/refs/pr/1", ("model", "gpt2", "paths-info", "refs/pr/1", "")),
        (
            "/api/datasets/squad/tree/refs/convert/parquet/plain_text",
            ("dataset", "squad", "tree", "refs/convert/parquet", "plain_text"),
        ),
    ],
)
def test_api_legacy_repo_with_unencoded_ref(raw: str, expected: tuple[str, str, str, str | None, str]) -> None:
    assert api(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["/api/whoami-v2", "/api/models", "/api/models/", "/api/users/org/name", "/org/name", "/", "/apimodels/org/name"],
)
def test_api_returns_none_for_other_routes(raw: str) -> None:
    assert parse_api(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        "/api/models/a/b/c",  # three-part repo ids do not exist
        "/api/models/a/b/c/tree/main",
        "/api/models/org/name/unknown/main",
        "/api/models/org/name/refs/extra",
        "/api/models/org/name/auth-check/extra",
        "/api/models/org/name/revision",
        "/api/models/org/name/tree",
        "/api/models/org/name/revision/main/extra",
        "/api/models/org/name/commits/main/extra",
        "/api/models/org//name",
    ],
)
def test_api_unknown_paths_are_not_found(raw: str) -> None:
    with pytest.raises(NotFound):
        parse_api(raw)


@pytest.mark.parametrize("file_path", TRAVERSALS)
def test_api_tree_rejects_bad_sub_paths(file_path: str) -> None:
    with pytest.raises(BadRequest):
        parse_api(f"/api/models/org/name/tree/main/{file_path}")


@pytest.mark.parametrize(
    "raw",
    [
        "/api/models/org/name/revision/..",
        "/api/models/org/name/revision/%2e%2e",
        "/api/models/org/name/tree/..%2F..%2Fx",
        "/api/models/org/name/paths-info/main%00",
        "/api/models/org/name/commits/%ff",
        f"/api/models/org/name/revision/{'r' * 257}",
        "/api/models/%2e%2e",
        "/api/models/-bad/name",
        "/api/models/org/a..b",
        "/api/models/org/a--b",
        f"/api/models/org/{'x' * 97}",
        "/api/models/a%2Fb%2Fc",
        "/api/datasets/org%5Cname",
        "/api/spaces/org/%00",
    ],
)
def test_api_rejects_bad_repo_ids_and_revisions(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_api(raw)

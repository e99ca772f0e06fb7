"""hfd.sh (the curl + aria2c download script many mirror users run) through the mirror.

The script is not vendored: its requests are replayed here exactly, with the real curl and aria2c
(the hfd.sh published after 2024-12, as copied into public repositories):

1. `curl -L -s -w %{http_code} -o .hfd/repo_metadata.json [-H "Authorization: Bearer $HF_TOKEN"]
   $HF_ENDPOINT/api/{models|datasets}/{id}[/revision/{rev}]?blobs=true`; reads `.gated` and
   `.siblings[] | .rfilename, .size`.
2. `curl -sSL [-H auth] $HF_ENDPOINT/api/{type}s/{id}/treesize/{rev}`; reads `.size` (a missing
   route is tolerated). If the siblings' sizes add up to it, the siblings are the file list.
3. Otherwise (siblings truncated on a big repo, or no jq): `curl -sSL [-H auth] -D - -o page
   $HF_ENDPOINT/api/{type}s/{id}/tree/{rev}?recursive=true&expand=false`, then every
   `Link: <...>; rel="next"` until there is none.
4. `aria2c --file-allocation=none -x 4 -j 5 -s 4 -k 1M -c -i list`, one entry per file:
   `$HF_ENDPOINT/[datasets/]{id}/resolve/{rev}/{path}` with ` dir=`, ` out=` and
   ` header=Authorization: Bearer $HF_TOKEN`. `--include`/`--exclude` filter paths client-side.

Both listing paths (2 and 3) are replayed on every run and must agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.mirrors import start_mirror
from tests.support.tools import TOOL_TIMEOUT, run, tool

TOKEN = "hf_hfd_token_0123456789abcdefghijklmnopq"
BIG = os.urandom(3 * 1024 * 1024 + 777)  # LFS; several aria2c 1 MiB segments
# More entries than one page of the mirror's tree (1000), so the walk follows its next link.
MANY = {f"many/f{i:04d}.txt": f"{i}\n".encode() for i in range(1010)}
FILES = {
    "config.json": b'{"model_type": "tiny"}',
    "model.safetensors": BIG,
    "sub/dir/notes.txt": b"nested notes\n",
    "empty.txt": b"",
    **MANY,
}
DATASET = {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# data\n"}


@dataclass
class World:
    hub: HubEmulator


@pytest.fixture
def world() -> Iterator[World]:
    with HubEmulator() as hub:
        hub.add_repo("model", "org/hfd", FILES, gated="manual", tokens=(TOKEN,))
        hub.add_repo("dataset", "org/hfd-data", DATASET)
        yield World(hub)


def auth(token: str | None) -> list[str]:
    return ["-H", f"Authorization: Bearer {token}"] if token else []


def next_url(headers: str) -> str:
    """What hfd's grep/sed pipeline takes from the last `link:` header: the rel="next" URL, or ""."""
    for line in headers.replace("\r", "").splitlines():
        if line.lower().startswith("link:"):
            match = re.search(r'<([^>]*)>;\s*rel="next"', line)
            if match:
                return match.group(1)
    return ""


@dataclass
class Outcome:
    siblings: dict[str, int]
    treesize: int | None
    walked: dict[str, int]
    tree_pages: int
    downloaded: list[str]


def hfd(
    endpoint: str,
    repo_id: str,
    local_dir: Path,
    *,
    token: str | None = None,
    dataset: bool = False,
    exclude: str | None = None,
) -> Outcome:
    """hfd.sh's requests for `repo_id` at main, in its order, into `local_dir`."""
    curl = tool("curl")
    api_path = f"datasets/{repo_id}" if dataset else f"models/{repo_id}"
    download_path = f"datasets/{repo_id}" if dataset else repo_id
    (local_dir / ".hfd").mkdir(parents=True)
    meta_file = local_dir / ".hfd" / "repo_metadata.json"

    # 1. Metadata (hfd exits unless the status is 200).
    proc = run(
        curl,
        "-L",
        "-s",
        "-w",
        "%{http_code}",
        "-o",
        str(meta_file),
        *auth(token),
        f"{endpoint}/api/{api_path}?blobs=true",
    )
    assert proc.stdout == "200", f"metadata: {proc.stdout} {meta_file.read_text()[:500] if meta_file.exists() else ''}"
    meta = json.loads(meta_file.read_text())
    assert meta["gated"] in (False, "auto", "manual")
    siblings = {s["rfilename"]: s.get("size") or 0 for s in meta["siblings"]}

    # 2. Treesize; hfd carries on without it, the replay wants it.
    proc = run(curl, "-sSL", *auth(token), f"{endpoint}/api/{api_path}/treesize/main")
    assert proc.returncode == 0, proc.stderr
    treesize = json.loads(proc.stdout).get("size")

    # 3. The paginated walk, as hfd runs it when the siblings do not add up to the treesize.
    walked: dict[str, int] = {}
    pages = 0
    url = f"{endpoint}/api/{api_path}/tree/main?recursive=true&expand=false"
    page_file = local_dir / ".hfd" / "tree_page.json"
    while url:
        proc = run(curl, "-sSL", *auth(token), "-D", "-", "-o", str(page_file), url)
        assert proc.returncode == 0, proc.stderr
        pages += 1
        walked.update({e["path"]: e["size"] for e in json.loads(page_file.read_text()) if e["type"] == "file"})
        url = next_url(proc.stdout)

    # 4. aria2c over the resolve URLs of the files wanted.
    wanted = [p for p in sorted(walked) if not (exclude and re.search(exclude, p))]
    entries = []
    for path in wanted:
        folder, _, name = path.rpartition("/")
        entry = f"{endpoint}/{download_path}/resolve/main/{path}\n dir={folder}\n out={name}\n"
        if token:
            entry += f" header=Authorization: Bearer {token}\n"
        entries.append(entry + "\n")
    (local_dir / ".hfd" / "aria2c_urls.txt").write_text("".join(entries))
    proc = run(
        tool("aria2c"),
        "--no-conf=true",
        "--quiet=true",
        "--log=.hfd/download.log",
        "--log-level=error",
        "--file-allocation=none",
        f"--timeout={TOOL_TIMEOUT}",
        "-x",
        "4",
        "-j",
        "5",
        "-s",
        "4",
        "-k",
        "1M",
        "-c",
        "-i",
        ".hfd/aria2c_urls.txt",
        cwd=local_dir,
    )
    log = (local_dir / ".hfd" / "download.log").read_text() if (local_dir / ".hfd" / "download.log").exists() else ""
    assert proc.returncode == 0, f"aria2c exited {proc.returncode}: {log[-3000:]}"
    return Outcome(siblings, treesize, walked, pages, wanted)


def assert_files(local_dir: Path, expected: dict[str, bytes], paths: list[str]) -> None:
    for path in paths:
        data = (local_dir / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(expected[path]).hexdigest(), path


def api_requests(mirror: MirrorThread) -> list[str]:
    return [path for method, path in mirror.requests if path.startswith("/api/")]


def test_hfd_downloads_a_gated_model_with_aria2c(world: World, tmp_path: Path) -> None:
    mirror = start_mirror(world.hub.url, tmp_path / "mirror-cache")
    try:
        out = hfd(mirror.url, "org/hfd", tmp_path / "hfd", token=TOKEN, exclude=r"^many/")
        # The siblings add up to the treesize, so hfd would skip the walk; the walk agrees.
        assert out.treesize == sum(len(v) for v in FILES.values())
        assert out.siblings == out.walked == {p: len(v) for p, v in FILES.items()}
        assert out.tree_pages == 2, "the mirror pages its tree at 1000 and hfd follows its link"
        assert sorted(out.downloaded) == sorted(p for p in FILES if not p.startswith("many/"))
        assert_files(tmp_path / "hfd", FILES, out.downloaded)
        api = api_requests(mirror)
        assert api[0] == "/api/models/org/hfd?blobs=true"
        assert api[1] == "/api/models/org/hfd/treesize/main"
        assert api[2] == "/api/models/org/hfd/tree/main?recursive=true&expand=false"
        # The second page's link names the mirror, and the commit, so both pages are one snapshot.
        assert re.fullmatch(r"/api/models/org/hfd/tree/[0-9a-f]{40}\?recursive=true&expand=false&cursor=1000", api[3])
        assert world.hub.count(path_contains="xet-read-token") == 0
        # Treesize is asked of upstream once per commit, however often clients ask.
        run(tool("curl"), "-sSL", *auth(TOKEN), f"{mirror.url}/api/models/org/hfd/treesize/main")
        assert world.hub.count(path_contains="/treesize/") == 1
    finally:
        mirror.stop()


def test_hfd_without_a_token_is_refused_the_gated_files(world: World, tmp_path: Path) -> None:
    mirror = start_mirror(world.hub.url, tmp_path / "mirror-cache")
    try:
        proc = run(
            tool("curl"), "-s", "-o", os.devnull, "-w", "%{http_code}", f"{mirror.url}/org/hfd/resolve/main/config.json"
        )
        assert proc.stdout == "401"
    finally:
        mirror.stop()


def test_hfd_downloads_a_dataset(world: World, tmp_path: Path) -> None:
    mirror = start_mirror(world.hub.url, tmp_path / "mirror-cache")
    try:
        out = hfd(mirror.url, "org/hfd-data", tmp_path / "data", dataset=True)
        assert out.treesize == sum(len(v) for v in DATASET.values())
        assert out.siblings == out.walked == {p: len(v) for p, v in DATASET.items()}
        assert_files(tmp_path / "data", DATASET, out.downloaded)
        assert api_requests(mirror)[:2] == [
            "/api/datasets/org/hfd-data?blobs=true",
            "/api/datasets/org/hfd-data/treesize/main",
        ]
    finally:
        mirror.stop()


def test_hfd_runs_again_with_upstream_down(world: World, tmp_path: Path) -> None:
    """A second machine runs hfd after upstream went down: all the first run fetched still comes down.

    What cannot work offline: files no run fetched before (the excluded ones here), revisions never
    resolved, and repos never seen; those answer 5xx, so hfd stops and a later run resumes.
    """
    # TTLs of 0: every request revalidates with upstream, so the outage is met on every call.
    ttl = {"revision_ttl": 0, "access_ttl": 0, "refs_ttl": 0}
    mirror = start_mirror(world.hub.url, tmp_path / "mirror-cache", cache=ttl)
    try:
        first = hfd(mirror.url, "org/hfd", tmp_path / "first", token=TOKEN, exclude=r"^many/")
        assert first.treesize == sum(len(v) for v in FILES.values())
        mirror.settle()
        world.hub.faults.down()
        again = hfd(mirror.url, "org/hfd", tmp_path / "second", token=TOKEN, exclude=r"^many/")
        assert again.siblings == first.siblings and again.walked == first.walked
        assert again.treesize == first.treesize and again.tree_pages == 2
        assert_files(tmp_path / "second", FILES, again.downloaded)
        # A file the first run excluded was never fetched: there is nothing to serve it from.
        proc = run(
            tool("curl"),
            "-s",
            "-o",
            os.devnull,
            "-w",
            "%{http_code}",
            *auth(TOKEN),
            f"{mirror.url}/org/hfd/resolve/main/many/f0001.txt",
        )
        assert proc.stdout.startswith("5"), proc.stdout
    finally:
        world.hub.faults.up()
        mirror.stop()

"""Who may read what, decided in one place: the allow-list, then gated/private access.

`Policy.check` is the one call a handler makes before it serves a repo's files or metadata. The
allow-list (repos an operator lets through, when enforced) and the access policy (tokens upstream
accepts for gated and private repos) are its two parts.
"""

from __future__ import annotations

from mirror.policy.access import AccessPolicy
from mirror.policy.allowlist import AllowEntry, AllowList
from mirror.repo import RepoRef

__all__ = ["AccessPolicy", "AllowEntry", "AllowList", "Policy"]


class Policy:
    def __init__(self, allowlist: AllowList, access: AccessPolicy) -> None:
        self.allowlist = allowlist
        self.access = access

    async def check(self, repo: RepoRef, token: str | None, *, files: bool) -> None:
        """Raise the Hub's error unless the caller may read this repo's files (or its metadata)."""
        await self.allowlist.check(repo)
        await self.access.check(repo, token, files=files)

    async def check_listed(self, repo: RepoRef) -> None:
        """The allow-list alone: for answers upstream decides itself (auth-check)."""
        await self.allowlist.check(repo)

    def forget(self, repo: RepoRef) -> None:
        self.access.forget(repo)

    async def close(self) -> None:
        """Cancel the access policy's background refreshes (at shutdown)."""
        await self.access.close()

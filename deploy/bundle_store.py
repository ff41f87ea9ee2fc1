"""Edge bundles in S3-compatible object storage (AWS S3, Cloudflare R2), with a movable ``current``.

Layout under ``s3://<bucket>/<prefix>/``::

    <version>/<path>          every file of the bundle's manifest
    <version>/manifest.json   written last: a version exists once its manifest does
    current.json              {"version", "manifest_sha256", "previous", "updated"}

Bundles are immutable.  Every object is written create-only (``If-None-Match: *``)
with a SHA-256 checksum the server verifies, then read back (``HeadObject``) and
compared with the manifest; an object that already holds the same bytes is
accepted, so publishing again is idempotent and resumes an interrupted upload,
while different content under a published version is refused.  ``current.json``
is replaced compare-and-swap (``If-Match`` on its ETag), so two operators moving
it at once cannot silently overwrite each other.

The S3 client is built by the caller (``boto3.client("s3", endpoint_url=...,
region_name="auto")`` for R2); any botocore failure surfaces as
:class:`BundleStoreError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped, unused-ignore]

from core import PerchError
from deploy.version import version_problem

__all__ = ["BundleStore", "BundleStoreError"]

MANIFEST = "manifest.json"
POINTER = "current.json"
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_CONFLICT_CODES = {"412", "PreconditionFailed", "ConditionalRequestConflict"}
_Entries = list[dict[str, Any]]


class BundleStoreError(PerchError):
    """A bundle cannot be published, listed or made current; the message says why."""


class _Missing(PerchError):
    pass


class _Conflict(PerchError):
    pass


@dataclass(frozen=True, slots=True)
class _Remote:
    size: int
    sha256: str | None  # hex; from the server's checksum, else the uploader's metadata
    etag: str


def _check_version(version: object) -> str:
    if problem := version_problem(version):
        raise BundleStoreError(problem)
    return str(version)


def _check_files(files: object, where: str) -> dict[str, tuple[str, int]]:
    if not isinstance(files, dict) or not files:
        raise BundleStoreError(f"{where}: 'files' must be a non-empty object")
    out: dict[str, tuple[str, int]] = {}
    for name, meta in files.items():
        parts = PurePosixPath(name).parts
        if (
            not parts
            or PurePosixPath(name).is_absolute()
            or ".." in parts
            or "\\" in name
            or name == MANIFEST
        ):
            raise BundleStoreError(f"{where}: file path {name!r} is not a plain relative path")
        sha, size = (meta.get("sha256"), meta.get("size")) if isinstance(meta, dict) else (None, None)
        if not (isinstance(sha, str) and len(sha) == 64 and isinstance(size, int) and size >= 0):
            raise BundleStoreError(f"{where}: {name!r} needs a sha256 (hex) and a size")
        out[name] = (sha.lower(), size)
    return out


def _preview(items: list[str], limit: int = 5) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _differs(remote: _Remote, sha: str, size: int, data: bytes | None) -> str | None:
    """Why ``remote`` is not the object described by (sha, size), or None if it is."""
    if remote.size != size:
        return f"size {remote.size}, expected {size}"
    if remote.sha256 is not None:
        return None if remote.sha256 == sha else f"sha256 {remote.sha256}, expected {sha}"
    if data is None:
        return None  # nothing more to compare against
    etag = remote.etag.strip('"')
    if "-" in etag or etag != hashlib.md5(data, usedforsecurity=False).hexdigest():
        return "no SHA-256 checksum and an ETag that is not the local file's MD5"
    return None


class BundleStore:
    """Versioned edge bundles under ``s3://<bucket>/<prefix>/``."""

    def __init__(
        self,
        s3_client: Any,
        bucket: str,
        prefix: str = "perch/bundles",
        *,
        workers: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s3 = s3_client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._workers = workers
        self._clock = clock

    # -- keys and single requests ------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def url(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self._key(*parts)}"

    def _call(self, op: str, key: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._s3, op)(Bucket=self.bucket, Key=key, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            if code in _MISSING_CODES:
                raise _Missing from None
            if code in _CONFLICT_CODES:
                raise _Conflict from None
            raise BundleStoreError(
                f"S3 {op} of s3://{self.bucket}/{key} failed: {code}: {error.get('Message', exc)}"
            ) from exc
        except BotoCoreError as exc:
            raise BundleStoreError(f"S3 {op} of s3://{self.bucket}/{key} failed: {exc}") from exc

    def _head(self, key: str) -> _Remote | None:
        try:
            head = self._call("head_object", key, ChecksumMode="ENABLED")
        except _Missing:
            return None
        sha: str | None = None
        checksum = head.get("ChecksumSHA256")
        if isinstance(checksum, str) and "-" not in checksum:  # "-N": a multipart composite
            sha = base64.b64decode(checksum).hex()
        elif isinstance(head.get("Metadata", {}).get("sha256"), str):
            sha = head["Metadata"]["sha256"].lower()
        return _Remote(int(head["ContentLength"]), sha, str(head.get("ETag", "")))

    def _get(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self._call("get_object", key)
        except _Missing:
            return None
        body = response["Body"]
        try:
            return body.read(), str(response.get("ETag", ""))
        except BotoCoreError as exc:
            raise BundleStoreError(f"S3 get_object of s3://{self.bucket}/{key} failed: {exc}") from exc
        finally:
            body.close()

    def _get_json(self, key: str) -> tuple[dict[str, Any], bytes, str] | None:
        got = self._get(key)
        if got is None:
            return None
        try:
            doc = json.loads(got[0])
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise BundleStoreError(f"s3://{self.bucket}/{key} is not a JSON object")
        return doc, got[0], got[1]

    def _put(self, key: str, data: bytes, **conditions: str) -> None:
        digest = hashlib.sha256(data).digest()
        self._call(
            "put_object",
            key,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
            Metadata={"sha256": digest.hex()},
            ContentType=mimetypes.guess_type(key)[0] or "application/octet-stream",
            **conditions,
        )

    def _ensure(self, key: str, data: bytes, sha: str) -> bool:
        """Make ``key`` hold ``data``, writing only if it is absent; True if this call wrote it."""
        remote = self._head(key)
        wrote = False
        if remote is None:
            try:
                self._put(key, data, IfNoneMatch="*")
                wrote = True
            except _Conflict:  # written meanwhile by someone else: compared below
                pass
            remote = self._head(key)
            if remote is None:
                raise BundleStoreError(f"s3://{self.bucket}/{key} is missing right after it was uploaded")
        problem = _differs(remote, sha, len(data), data)
        if problem:
            raise BundleStoreError(
                f"s3://{self.bucket}/{key} holds other content ({problem}); bundles are immutable, so it is "
                "not overwritten: remove that object (an interrupted upload?) or publish under a new version"
            )
        return wrote

    def _map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            return list(pool.map(fn, items))

    # -- manifests and the pointer -------------------------------------------------------------------

    def _manifest(self, version: str) -> tuple[dict[str, Any], bytes] | None:
        got = self._get_json(self._key(version, MANIFEST))
        if got is None:
            return None
        _check_files(got[0].get("files"), self.url(version, MANIFEST))
        return got[0], got[1]

    def pointer(self) -> dict[str, Any] | None:
        """The contents of current.json, or None before the first publish."""
        got = self._get_json(self._key(POINTER))
        return got[0] if got else None

    def current(self) -> str | None:
        """The current version, or None before the first publish."""
        doc = self.pointer()
        return str(doc["version"]) if doc and doc.get("version") else None

    def _move_current(self, version: str, manifest_sha256: str) -> dict[str, Any]:
        got = self._get_json(self._key(POINTER))
        old = got[0] if got else None
        if old is not None and old.get("version") == version:
            return old
        doc = {
            "version": version,
            "manifest_sha256": manifest_sha256,
            "previous": old.get("version") if old else None,
            "updated": int(self._clock()),
        }
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        try:
            self._put(self._key(POINTER), data, **({"IfMatch": got[2]} if got else {"IfNoneMatch": "*"}))
        except _Conflict:
            raise BundleStoreError(
                f"{self.url(POINTER)} changed while it was being moved to {version} (another publish or "
                "rollback at the same time?); check `perch bundle list` and try again"
            ) from None
        return doc

    # -- the operations ------------------------------------------------------------------------------

    def publish(self, bundle_dir: Path, *, make_current: bool = True) -> dict[str, Any]:
        """Upload the bundle in ``bundle_dir`` (verified against its manifest first); make it current."""
        manifest_path = bundle_dir / MANIFEST
        try:
            manifest_bytes = manifest_path.read_bytes()
            manifest = json.loads(manifest_bytes)
        except (OSError, ValueError) as exc:
            raise BundleStoreError(f"{manifest_path}: cannot read the bundle's manifest: {exc}") from None
        if not isinstance(manifest, dict):
            raise BundleStoreError(f"{manifest_path}: not a JSON object")
        version = _check_version(manifest.get("version"))
        files = _check_files(manifest.get("files"), str(manifest_path))

        blobs: dict[str, bytes] = {}
        problems: list[str] = []
        for name, (sha, size) in sorted(files.items()):
            try:
                data = (bundle_dir / name).read_bytes()
            except OSError as exc:
                problems.append(f"{name}: {exc.strerror or exc}")
                continue
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                problems.append(f"{name}: differs from the manifest")
            blobs[name] = data
        if problems:
            raise BundleStoreError(
                f"{bundle_dir} does not match its manifest, refusing to publish: {_preview(problems)}"
            )

        published = self._manifest(version)
        if published is not None:
            self._refuse_if_different(version, published[0], manifest)
        uploaded = self._map(
            lambda name: self._ensure(self._key(version, name), blobs[name], files[name][0]), sorted(files)
        )
        if published is None:
            try:
                self._ensure(
                    self._key(version, MANIFEST), manifest_bytes, hashlib.sha256(manifest_bytes).hexdigest()
                )
            except BundleStoreError:  # a concurrent publish of the same version got there first
                published = self._manifest(version)
                if published is None:
                    raise
                self._refuse_if_different(version, published[0], manifest)
        stored = published[1] if published is not None else manifest_bytes
        manifest_sha256 = hashlib.sha256(stored).hexdigest()
        if make_current:
            self._move_current(version, manifest_sha256)
        return {
            "version": version,
            "manifest_sha256": manifest_sha256,
            "files": len(files),
            "uploaded": sum(uploaded),
            "total_size": sum(size for _, size in files.values()),
            "already_published": published is not None,
            "current": self.current() == version,
        }

    def _refuse_if_different(self, version: str, remote: dict[str, Any], local: dict[str, Any]) -> None:
        theirs, ours = remote.get("files", {}), local["files"]
        changed = sorted(n for n in set(theirs) | set(ours) if theirs.get(n) != ours.get(n))
        if changed:
            raise BundleStoreError(
                f"bundle {version} is already published at {self.url(version)}/ with different files "
                f"({_preview(changed)}); bundles are immutable: build and publish a new version"
            )

    def list(self) -> _Entries:
        """Every complete (manifest-bearing) version, oldest first."""
        base = self._key("") + "/" if self.prefix else ""
        versions: list[str] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                versions += [p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        except (ClientError, BotoCoreError) as exc:
            raise BundleStoreError(f"listing s3://{self.bucket}/{base} failed: {exc}") from exc
        current = self.current()
        entries: _Entries = []
        for version in versions:
            found = self._manifest(version)
            if found is None:
                continue  # an upload that never finished
            manifest = found[0]
            entries.append(
                {
                    "version": version,
                    "created": manifest.get("created"),
                    "total_size": manifest.get("total_size")
                    or sum(int(f["size"]) for f in manifest["files"].values()),
                    "files": len(manifest["files"]),
                    "current": version == current,
                }
            )
        return sorted(
            entries,
            key=lambda e: (e["created"] if isinstance(e["created"], int | float) else 0, e["version"]),
        )

    def rollback(self, version: str) -> dict[str, Any]:
        """Make ``version`` current again, after checking all its files are still in the bucket."""
        _check_version(version)
        found = self._manifest(version)
        if found is None:
            known = ", ".join(e["version"] for e in self.list()) or "none"
            raise BundleStoreError(f"no bundle {version} at {self.url(version)}/ (published: {known})")
        files = _check_files(found[0]["files"], self.url(version, MANIFEST))

        def check(name: str) -> str | None:
            remote = self._head(self._key(version, name))
            if remote is None:
                return f"{name}: missing"
            problem = _differs(remote, *files[name], None)
            return f"{name}: {problem}" if problem else None

        problems = [p for p in self._map(check, sorted(files)) if p]
        if problems:
            raise BundleStoreError(
                f"bundle {version} at {self.url(version)}/ is damaged, refusing to make it current: "
                + _preview(problems)
            )
        return self._move_current(version, hashlib.sha256(found[1]).hexdigest())

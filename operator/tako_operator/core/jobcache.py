"""The newest PythonJob bodies the operator has seen, so that a reconcile pass needs no GET (pure).

A pass used to start by reading its job from the API (a watch event's body can be older than what the
previous pass just wrote). Instead, this cache holds, per job, the newest body known: the watch's, or
the API's answer to the operator's own patch, whichever is newer. A watch event is older than the
operator's last write exactly when it does not show that write yet (watch events arrive in order, and
only the operator writes a job's status and its retry annotations), so:

- `wrote(answer)`: the patched object becomes the body, and the written status/annotations are kept
  as "unconfirmed" until the watch shows them;
- `observed(event)`: an event that shows the unconfirmed write (or when there is none) becomes the
  body and confirms it; an older one is dropped (the cached answer is newer).

Bounded: at most `max_entries` bodies (least recently used dropped first; a miss costs one GET), each
stored without what a pass never reads from the cache (`spec.code` becomes a placeholder comment,
`spec.inputData`, `status.stdout`, `status.stderr`, `managedFields` and kubectl's last-applied
annotation are dropped). A pass that may create objects
needs the full job (the builders put code and input into the ConfigMap and the push): `slim(body)` is
True for those bodies and the pass reads the job from the API or uses its full watch event.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from tako_operator.core.standby import ANNOTATION_CLAIMED_BY as CLAIMED_BY

Key = tuple[str, str]
SLIM = "__tako_slim__"  # marks a body stored without code/input/output
ANSWER = "__tako_answer__"  # marks a body that is the API's answer to the operator's own patch
UNCONFIRMED_FACTOR = 4
SPEC_DROPPED = ("code", "inputData")
CODE_PLACEHOLDER = "# spec.code is not kept in the operator's job cache"
STATUS_DROPPED = ("stdout", "stderr")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
DEFAULT_MAX_ENTRIES = 256
POD_SPEC_READ = ("runtimeClassName", "activeDeadlineSeconds", "nodeName")


def slim_copy(body: dict[str, Any]) -> dict[str, Any]:
    """`body` without the large fields (a new top level; nested objects are shared, never mutated)."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    spec = {k: v for k, v in (body.get("spec") or {}).items() if k not in SPEC_DROPPED}
    if "code" in (body.get("spec") or {}):
        spec["code"] = CODE_PLACEHOLDER  # keeps the job a valid PythonJob for the status builders
    result = {**body, "metadata": meta, "spec": spec, SLIM: True}
    if isinstance(body.get("status"), dict):
        result["status"] = {k: v for k, v in body["status"].items() if k not in STATUS_DROPPED}
    return result


def slim_pod(body: Any) -> dict[str, Any]:
    """A Pod as the reconciler reads it from the index: metadata (without managedFields) and status,
    and of the spec only what it reads (runtime class, deadline); a claimed standby Pod keeps its spec
    (the push needs the token and the port). A new top level; nested objects are shared."""
    raw = dict(body)
    meta = dict(raw.get("metadata") or {})
    meta.pop("managedFields", None)
    raw["metadata"] = meta
    spec = raw.get("spec") or {}
    if not (meta.get("annotations") or {}).get(CLAIMED_BY):
        raw["spec"] = {k: spec[k] for k in POD_SPEC_READ if k in spec}
    return raw


def is_slim(body: dict[str, Any]) -> bool:
    return bool(body.get(SLIM))


def _key(body: dict[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _written(body: dict[str, Any], annotations: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    status = {k: v for k, v in (body.get("status") or {}).items() if k not in STATUS_DROPPED}
    return status, annotations


def _shows(body: dict[str, Any], written: tuple[dict[str, Any], dict[str, Any]]) -> bool:
    status, annotations = written
    current = {k: v for k, v in (body.get("status") or {}).items() if k not in STATUS_DROPPED}
    stored = (body.get("metadata") or {}).get("annotations") or {}
    return current == status and all(stored.get(k) == v for k, v in annotations.items())


class JobCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.bodies: OrderedDict[Key, dict[str, Any]] = OrderedDict()
        # the operator's writes the watch has not shown yet: key -> (status, annotations written)
        self.unconfirmed: dict[Key, tuple[dict[str, Any], dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self.bodies)

    def get(self, key: Key) -> dict[str, Any] | None:
        """The newest known (slim) body of the job, or None (then read it from the API)."""
        body = self.bodies.get(key)
        if body is not None:
            self.bodies.move_to_end(key)
        return body

    def observed(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """A watch event's body (or a fresh read). When it is the newest known version it is stored,
        and the stored (slim) body is returned: while `get` returns that very object, `body` is the
        newest full version. None when it is older than the operator's own last write."""
        key = _key(body)
        written = self.unconfirmed.get(key)
        if written is not None:
            if not _shows(body, written):
                return None  # older than the operator's own last write: keep the answer to the write
            del self.unconfirmed[key]
        stored = slim_copy(body)
        self._store(key, stored)
        return stored

    def is_current(self, key: Key, stored: dict[str, Any]) -> bool:
        """Whether `stored` (returned by `observed`) is still the newest known body of `key`."""
        return self.bodies.get(key) is stored

    def wrote(self, answer: dict[str, Any], annotations: dict[str, Any] | None = None) -> None:
        """The API's answer to a patch of the job's status or `annotations` (the object after it)."""
        key = _key(answer)
        written = _written(answer, dict(annotations or {}))
        stored = self.bodies.get(key)
        if stored is not None and stored.get(ANSWER) is None and _shows(stored, written):
            # the watch already showed this write (its event can beat the answer to the patch)
            self.unconfirmed.pop(key, None)
            return
        self.unconfirmed[key] = written
        while len(self.unconfirmed) > UNCONFIRMED_FACTOR * max(self.max_entries, 1):
            # bounded too: a job whose write is forgotten unconfirmed is read from the API next time
            oldest = next(iter(self.unconfirmed))
            del self.unconfirmed[oldest]
            self.bodies.pop(oldest, None)
        body = slim_copy(answer)
        body[ANSWER] = True
        self._store(key, body)

    def forget(self, key: Key) -> None:
        self.bodies.pop(key, None)
        self.unconfirmed.pop(key, None)

    def _store(self, key: Key, body: dict[str, Any]) -> None:
        self.bodies[key] = body
        self.bodies.move_to_end(key)
        while len(self.bodies) > self.max_entries:
            self.bodies.popitem(last=False)
